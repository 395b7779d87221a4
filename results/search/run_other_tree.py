"""Run a script against another coldpress tree (e.g. an older commit unpacked with git archive) instead
of the editable install: drops the editable finder, puts TREE first on sys.path.

Usage: python run_other_tree.py SCRIPT ARGS...   (TREE: /tmp/oldcp; edit below)"""
import sys, runpy
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__ and 'editable' not in getattr(f, '__name__', '') and '_EditableFinder' not in repr(f)]
sys.path.insert(0, '/tmp/oldcp')
import coldpress; print(coldpress.__file__, file=sys.stderr)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
