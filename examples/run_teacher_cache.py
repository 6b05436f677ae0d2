"""``accelerate launch examples/run_teacher_cache.py ...``: the installed script :mod:`seed_hf.scripts.run_teacher_cache`
(also ``seed-hf ...``); see its docstring and ``--help``."""

from seed_hf.scripts.run_teacher_cache import main

if __name__ == "__main__":
    main()
