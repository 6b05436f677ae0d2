"""``accelerate launch examples/run_export.py ...``: the installed script :mod:`seed_hf.scripts.run_export`
(also ``seed-hf ...``); see its docstring and ``--help``."""

from seed_hf.scripts.run_export import main

if __name__ == "__main__":
    main()
