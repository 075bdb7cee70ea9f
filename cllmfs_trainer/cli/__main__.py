"""`python -m cllmfs_trainer.cli JOB ...`, and `accelerate launch -m cllmfs_trainer.cli train RECIPE.yaml`."""

import sys

from cllmfs_trainer.cli import main

sys.exit(main())
