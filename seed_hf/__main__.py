"""``python -m seed_hf <command>`` (and ``accelerate launch -m seed_hf <command>``): the ``seed-hf`` command."""

from seed_hf.cli.main import main

main()
