"""``accelerate launch examples/run_export_onnx.py ...``: the installed script :mod:`seed_hf.scripts.run_export_onnx`
(also ``seed-hf ...``, see ``seed-hf --help``); its docstring and ``--help`` say the rest."""

from seed_hf.scripts.run_export_onnx import cli

if __name__ == "__main__":
    cli()
