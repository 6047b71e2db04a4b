"""Boxes and GenEval's relative-position rule, as the shapes world's renderer and oracle use them.

The rules live in `trl_srum.object_rules` (shared with the `geneval` evaluation protocol); see that module for the
coordinate conventions and the rule itself. In the shapes world an object drawn several times is located by the union
box of its instances: its centre is that box's centre and its size along each axis is that box's width or height.
"""

from __future__ import annotations

from ..object_rules import POSITION_THRESHOLD, Box, relation_components, relations, union_box


__all__ = ["POSITION_THRESHOLD", "Box", "relation_components", "relations", "union_box"]
