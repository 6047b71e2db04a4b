"""Plug-ins: packages that add prompt sources, evaluation protocols or named models to trl-srum, without any part of
trl-srum naming them.

A plug-in declares an entry point in the group `trl_srum.plugins`; its value is a function that registers what the
plug-in adds, with the registry of the layer it extends:

- `trl_srum.rollout.prompts.register_prompt_source`: prompts for stage 1 (`RolloutConfig.prompt_source`);
- `trl_srum.eval.protocols.register_protocol`: an evaluation protocol (`trl-srum eval --protocol`);
- `trl_srum.models.register_model_alias`: a name for a model folder (`--model_name_or_path <name>`).

The shapes world is one (setup.cfg: `shapes = trl_srum.shapes.plugin:register`). Registries call `load_plugins()`
before they answer, so a plug-in is ready wherever its names are used.
"""

import functools
from importlib.metadata import entry_points


ENTRY_POINT_GROUP = "trl_srum.plugins"


@functools.cache
def load_plugins() -> tuple[str, ...]:
    """Run the registration of every installed plug-in, once; returns their names.

    Raises:
        RuntimeError: naming the plug-in whose registration failed.
    """
    names = []
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: point.name):
        try:
            entry_point.load()()
        except Exception as error:
            raise RuntimeError(
                f"trl-srum plug-in {entry_point.name!r} ({entry_point.value}) failed to register"
            ) from error
        names.append(entry_point.name)
    return tuple(names)
