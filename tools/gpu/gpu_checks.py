"""GPU checks: encoder speed at 1080p, decode determinism GPU vs CPU (run on the device machine)."""
import glob, hashlib, json, sys, time
import numpy as np, torch
from PIL import Image
from coldpress.codec.learned import LearnedCodec

weights = sys.argv[1]
out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
gpu = LearnedCodec(model=weights, device="cuda")
cpu = LearnedCodec(model=weights, device="cpu")
net = gpu.net
torch.backends.cudnn.benchmark = True
for batch in (1, 8):
    x = torch.rand(batch, 3, 1088, 1920, device="cuda")  # 1080p padded to the latent grid
    for dtype in ("fp32", "bf16"):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            for _ in range(5):
                net.h_a(net.g_a(x))
            torch.cuda.synchronize(); t = time.time(); n = 20
            for _ in range(n):
                net.h_a(net.g_a(x))
            torch.cuda.synchronize(); dt = time.time() - t
        out[f"encoder_fps_1080p_batch{batch}_{dtype}"] = round(n * batch / dt, 1)
img = np.asarray(Image.open(sorted(glob.glob(".carry/evalsub/*"))[0]).convert("RGB"))
big = np.concatenate([np.concatenate([img] * 4, 1)] * 4, 0)[:1080, :1920].copy()
for name, im in (("small", img), ("1080p", big)):
    t = time.time(); r = gpu.encode(im, 0.05); enc = time.time() - t
    t = time.time(); d_gpu = gpu.decode(r.bitstream); dec_gpu = time.time() - t
    t = time.time(); d_cpu = cpu.decode(r.bitstream); dec_cpu = time.time() - t
    r_cpu = cpu.encode(im, 0.05)
    out[name] = {
        "shape": list(im.shape), "full_encode_s_gpu": round(enc, 3), "decode_s_gpu": round(dec_gpu, 3),
        "decode_s_cpu16": round(dec_cpu, 3), "achieved_bpp": r.achieved_bpp,
        "gpu_cpu_decode_identical": hashlib.sha256(d_gpu.tobytes()).hexdigest() == hashlib.sha256(d_cpu.tobytes()).hexdigest(),
        "max_abs_diff": int(np.abs(d_gpu.astype(int) - d_cpu).max()),
        "cpu_encoded_decodes_on_gpu_identical": bool((gpu.decode(r_cpu.bitstream) == cpu.decode(r_cpu.bitstream)).all()),
        "gpu_and_cpu_bitstreams_equal": r.bitstream == r_cpu.bitstream,
    }
print(json.dumps(out, indent=1))
