"""``python -m vit_lens_clip ...`` (and ``torchrun --nproc-per-node N -m vit_lens_clip collect ...``): the CLI."""

import sys

from vit_lens_clip.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
