"""``accelerate launch examples/run_export_onnx.py ...``: the installed script :mod:`seed_hf.scripts.run_export_onnx`
(also ``seed-hf ...``); see its docstring and ``--help``."""

from seed_hf.scripts.run_export_onnx import main

if __name__ == "__main__":
    main()
