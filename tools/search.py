"""Search surrogate-loss parameters with PPO2 over real MMSeg proxy trainings.

    python tools/search.py CONFIG [--work-dir DIR] [--seed 1] [--searcher ppo|random]
                                  [--executor local|slurm] [--workers N] ...

Running the same command again on the same work directory resumes the search.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asl.search.cli import search_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(search_main())
