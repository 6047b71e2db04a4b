"""Run a recipe script and kill this process (SIGKILL, as a pre-emption or the out-of-memory killer would) right
after the trainer has saved checkpoint N, so that a test can resume from a known point:

    python tests/scripts/run_until_checkpoint.py N recipes/srum_bagel.py --config ...
"""

import os
import runpy
import signal
import sys

from trl_srum.srum_trainer import SRUMTrainer


def main() -> None:
    kill_after, script = int(sys.argv[1]), sys.argv[2]
    sys.argv = [script, *sys.argv[3:]]
    save_checkpoint = SRUMTrainer._save_checkpoint

    def save_then_die(self, model, trial):
        save_checkpoint(self, model, trial)
        if self.state.global_step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    SRUMTrainer._save_checkpoint = save_then_die
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
