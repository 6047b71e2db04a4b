"""The commands of `trl-srum`, one module each with a `main(argv)`: `rollout` (stage 1), `train` (stage 2 on a
rollout dataset), `run` (SRUM in rounds, with an evaluation before and after; the main job) and `convert_official`.
The recipes under `recipes/` are thin launchers over them."""
