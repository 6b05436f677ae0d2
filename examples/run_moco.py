"""``accelerate launch examples/run_moco.py ...``: the installed script :mod:`seed_hf.scripts.run_moco`
(also ``seed-hf ...``); see its docstring and ``--help``."""

from seed_hf.scripts.run_moco import main

if __name__ == "__main__":
    main()
