from dataclasses import dataclass, field
from typing import Any

from trl.trainer.base_config import _BaseConfig

from .flow import TIMESTEP_SAMPLINGS
from .reward_map import REWARD_MAP_MODES, REWARD_MAP_POOLINGS


TRAINABLE_PARAMETER_SETS: tuple[str, ...] = ("generation", "all")
LATENT_SOURCES: tuple[str, ...] = ("auto", "stored", "encode")
MISSING_GLOBAL_SCORE_POLICIES: tuple[str, ...] = ("drop", "neutral")
LOSS_TYPES: tuple[str, ...] = ("srum", "nft")
CONSTRAINT_TYPES: tuple[str, ...] = ("self", "reference", "none")


@dataclass
class SRUMConfig(_BaseConfig):
    r"""
    Configuration class for the [`SRUMTrainer`].

    This class includes only the parameters that are specific to SRUM training. For a full list of training arguments,
    please refer to the [`~transformers.TrainingArguments`] documentation. Note that default values in this class may
    differ from those in [`~transformers.TrainingArguments`].

    Parameters:
        > Parameters that control the model and reference model

        model_init_kwargs (`str` or `dict[str, Any]`, *optional*):
            Keyword arguments for the model's `from_pretrained`, used when the `model` argument of the
            [`SRUMTrainer`] is provided as a string.
        trainable_parameters (`str`, *optional*, defaults to `"generation"`):
            Which parameters full (non-PEFT) training updates: `"generation"` trains only the parameters the model
            reports as generation-only, so the understanding module that judged the rollouts cannot drift;
            `"all"` trains everything, as the released SRUM scripts do.

        > Parameters that control the loss

        loss_type (`str`, *optional*, defaults to `"srum"`):
            `"srum"`: the paper's reward-weighted flow matching (`trl_srum.loss.srum_loss`). `"nft"`: the
            negative-aware, group-centred loss (`trl_srum.loss.nft_loss`): each token's reward is compared with the
            other candidates of its prompt, so a prompt whose candidates all score alike teaches nothing; it needs
            several candidates per prompt (8 recommended) and suits online rounds (`trl_srum.pipeline`).
        nft_beta (`float`, *optional*, defaults to `1.0`):
            β of the negative-aware loss: how far its implied positive and negative policies lie from the old model.
        advantage_clip (`float`, *optional*, defaults to `1.0`):
            c: advantages (in group standard deviations) are clipped to [−c, c] before becoming weights ½ + A/2c.
        constraint (`str`, *optional*):
            The term against reward hacking. `"self"`: the released anchor, plain flow matching toward the same
            generated latent, weighted by `lambda_constraint`. `"reference"`: a KL-style pull `‖v_θ − v_ref‖²` toward
            a frozen reference model (under PEFT the same model with the adapter disabled), weighted by
            `reference_weight`. `"none"`. Defaults to `"self"` for `loss_type="srum"` and `"none"` for `"nft"`, which
            refuses `"self"` (an imitation term is what its centring exists to cancel).
        lambda_constraint (`float`, *optional*, defaults to `0.5`):
            Weight λ_c of the `"self"` constraint; 0.5 in every released recipe.
        reference_weight (`float`, *optional*, defaults to `0.25`):
            Weight of the `"reference"` constraint.

        > Parameters that control the reward map

        reward_map_mode (`str`, *optional*, defaults to `"official"`):
            `"official"` reproduces the released code (rewards in [0, 1], regions scored ≤ 0 have no effect);
            `"signed"` follows the paper (rewards in [-1, 1], negative regions are pushed away, boundedly).
        reward_map_pooling (`str`, *optional*, defaults to `"bilinear"`):
            How the pixel map becomes one reward per latent token. `"bilinear"` is the released code (each token reads
            the pixels around its centre; exact for BAGEL's 16-pixel tokens). `"area"` gives each token the mean over
            its cell, so a region smaller than a token still counts: use it where a token covers many pixels
            (BLIP3o's 8×8 grid, whose recipes set it).
        repulsion_margin (`float`, *optional*, defaults to `1.0`):
            Per-token squared error at which the repulsion of a negative-reward token stops (`"signed"` only).
        use_global_reward (`bool`, *optional*, defaults to `True`):
            Whether the global (layout) score enters the map. `False` treats every global score as 0 (ablation).
        use_local_rewards (`bool`, *optional*, defaults to `True`):
            Whether region scores enter the map. `False` keeps only the global score (ablation).
        drop_failed_rollouts (`bool`, *optional*, defaults to `True`):
            Whether to train only on rollout rows whose `status` is `"ok"`.
        missing_global_score (`str`, *optional*, defaults to `"drop"`):
            What to do with a row whose regions were judged but whose global score is missing (`null`). `"drop"`
            leaves it out (as the released pipeline does: its formatter drops every row with g = 0, failures
            included); `"neutral"` trains on it with g = 0 and counts it (`reward_map/missing_global`).

        > Parameters that control the flow-matching path

        timestep_sampling (`str`, *optional*, defaults to `"logit_normal"`):
            Training-time distribution of t: `"logit_normal"` (BAGEL) or `"uniform"`.
        logit_mean (`float`, *optional*, defaults to `0.0`):
            Mean of the normal whose sigmoid is t (`"logit_normal"` only).
        logit_std (`float`, *optional*, defaults to `1.0`):
            Standard deviation of that normal.
        timestep_shift (`float`, *optional*, defaults to `1.0`):
            Shift `s·t/(1+(s−1)·t)` applied to the sampled t; BAGEL trains with 1 (none) and samples with 3.
        timestep_min (`float`, *optional*, defaults to `0.0`):
            Lower end of the interval t is finally mapped into.
        timestep_max (`float`, *optional*, defaults to `1.0`):
            Upper end of that interval (e.g. `timestep_min=0.6` trains only the layout-deciding noisy steps).
        text_dropout (`float`, *optional*, defaults to `0.1`):
            Probability of dropping a sample's prompt, which keeps classifier-free guidance working.
        latent_source (`str`, *optional*, defaults to `"auto"`):
            Where the clean latents come from: `"stored"` (the generator's own latents in the rollout row),
            `"encode"` (encode the row's image, as the released code does), or `"auto"` (stored when present).
        sample_posterior (`bool`, *optional*, defaults to `True`):
            When encoding, sample the autoencoder posterior as the released code does; the constraint anchor then
            gets its own, independent sample. `False` uses the posterior mean for both.

    > [!NOTE]
    > Defaults that differ from [`~transformers.TrainingArguments`]: `learning_rate=2e-5`, `num_train_epochs=1` (in
    > rounds, each round's fresh samples are used about once), `adam_beta2=0.95`,
    > `lr_scheduler_type="constant_with_warmup"` (the released recipe), `logging_steps=10`,
    > activation (gradient) checkpointing off (TRL turns it on; enable it only for models that support it) and
    > `remove_unused_columns=False`.
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs"]

    # Parameters whose default values are overridden from TrainingArguments
    learning_rate: float = field(default=2e-5, metadata={"help": "The initial learning rate for AdamW."})
    num_train_epochs: float = field(
        default=1.0,
        metadata={
            "help": "Passes over the rollout data (each round's, in rounds): 1 uses every sample about once, as "
            "online fine-tuning does. `max_steps` > 0 overrides it."
        },
    )
    adam_beta2: float = field(default=0.95, metadata={"help": "The beta2 hyperparameter of AdamW."})
    lr_scheduler_type: str = field(
        default="constant_with_warmup", metadata={"help": "The scheduler type to use (released SRUM: constant)."}
    )
    # TRL turns this deprecated alias on by default; an image model must opt in through `activation_checkpointing`.
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Deprecated alias of `activation_checkpointing` (off by default; BAGEL supports it)."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Must stay False: the trainer reads the rollout columns itself."},
    )

    # Parameters that control the model and reference model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `from_pretrained` when `model` is given as a string."},
    )
    trainable_parameters: str = field(
        default="generation",
        metadata={
            "help": "Parameters updated by full training: 'generation' (judge frozen) or 'all' (released scripts).",
            "choices": list(TRAINABLE_PARAMETER_SETS),
        },
    )
    # Parameters that control the loss
    loss_type: str = field(
        default="srum",
        metadata={
            "help": "'srum' (the paper's reward-weighted flow matching) or 'nft' (negative-aware, group-centred).",
            "choices": list(LOSS_TYPES),
        },
    )
    nft_beta: float = field(default=1.0, metadata={"help": "β of the negative-aware loss ('nft')."})
    advantage_clip: float = field(default=1.0, metadata={"help": "Clip c of the group-centred advantages ('nft')."})
    constraint: str | None = field(
        default=None,
        metadata={
            "help": "Term against reward hacking: 'self' (released anchor), 'reference' (pull toward a frozen model) "
            "or 'none'; default 'self' for loss_type='srum', 'none' for 'nft'.",
            "choices": list(CONSTRAINT_TYPES),
        },
    )
    lambda_constraint: float = field(
        default=0.5, metadata={"help": "Weight λ_c of the 'self' constraint (0.5 in the released recipes)."}
    )
    reference_weight: float = field(default=0.25, metadata={"help": "Weight of the 'reference' constraint."})

    # Parameters that control the reward map
    reward_map_mode: str = field(
        default="official",
        metadata={
            "help": "'official' (released code, rewards in [0, 1]) or 'signed' (paper, rewards in [-1, 1]).",
            "choices": list(REWARD_MAP_MODES),
        },
    )
    reward_map_pooling: str = field(
        default="bilinear",
        metadata={
            "help": "Pixel map -> tokens: 'bilinear' (released; token centres) or 'area' (mean over each token's cell).",
            "choices": list(REWARD_MAP_POOLINGS),
        },
    )
    repulsion_margin: float = field(
        default=1.0, metadata={"help": "Squared error at which a negative token's repulsion stops ('signed')."}
    )
    use_global_reward: bool = field(default=True, metadata={"help": "Whether the global score enters the map."})
    use_local_rewards: bool = field(default=True, metadata={"help": "Whether region scores enter the map."})
    drop_failed_rollouts: bool = field(
        default=True, metadata={"help": "Train only on rollout rows whose status is 'ok'."}
    )
    missing_global_score: str = field(
        default="drop",
        metadata={
            "help": "Rows without a global score: 'drop' them (released pipeline) or train with a 'neutral' g = 0.",
            "choices": list(MISSING_GLOBAL_SCORE_POLICIES),
        },
    )

    # Parameters that control the flow-matching path
    timestep_sampling: str = field(
        default="logit_normal",
        metadata={"help": "Training distribution of t.", "choices": list(TIMESTEP_SAMPLINGS)},
    )
    logit_mean: float = field(default=0.0, metadata={"help": "Mean of the logit-normal t distribution."})
    logit_std: float = field(default=1.0, metadata={"help": "Standard deviation of the logit-normal t distribution."})
    timestep_shift: float = field(default=1.0, metadata={"help": "Shift applied to the training t (BAGEL: 1)."})
    timestep_min: float = field(default=0.0, metadata={"help": "Lower end of the training t interval."})
    timestep_max: float = field(default=1.0, metadata={"help": "Upper end of the training t interval."})
    text_dropout: float = field(default=0.1, metadata={"help": "Probability of dropping a sample's prompt (CFG)."})
    latent_source: str = field(
        default="auto",
        metadata={
            "help": "Clean latents from 'stored' rollouts, 'encode'd images, or 'auto'.",
            "choices": list(LATENT_SOURCES),
        },
    )
    sample_posterior: bool = field(
        default=True, metadata={"help": "Sample the autoencoder posterior when encoding images (released code)."}
    )

    def __post_init__(self):
        super().__post_init__()

        def choice(name: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")

        choice("trainable_parameters", TRAINABLE_PARAMETER_SETS)
        choice("loss_type", LOSS_TYPES)
        if self.constraint is None:
            self.constraint = "self" if self.loss_type == "srum" else "none"
        choice("constraint", CONSTRAINT_TYPES)
        choice("reward_map_mode", REWARD_MAP_MODES)
        choice("reward_map_pooling", REWARD_MAP_POOLINGS)
        choice("missing_global_score", MISSING_GLOBAL_SCORE_POLICIES)
        choice("timestep_sampling", TIMESTEP_SAMPLINGS)
        choice("latent_source", LATENT_SOURCES)

        if self.lambda_constraint < 0 or self.reference_weight < 0:
            raise ValueError(
                f"constraint weights must be >= 0; got lambda_constraint={self.lambda_constraint}, "
                f"reference_weight={self.reference_weight}"
            )
        if self.constraint == "reference" and self.reference_weight == 0:
            raise ValueError(
                "constraint='reference' with reference_weight=0 would run a reference forward for nothing; "
                "use constraint='none' to train without a constraint"
            )
        if self.loss_type == "nft":
            if self.constraint == "self":
                raise ValueError(
                    "loss_type='nft' with constraint='self': the self anchor is an imitation term, which the "
                    "negative-aware loss exists to cancel; use constraint='reference' (a pull toward the frozen "
                    "model) or 'none'"
                )
            if self.nft_beta <= 0 or self.advantage_clip <= 0:
                raise ValueError(
                    f"nft_beta and advantage_clip must be > 0; got {self.nft_beta} and {self.advantage_clip}"
                )
        if self.reward_map_mode == "signed" and self.repulsion_margin <= 0:
            raise ValueError(f"reward_map_mode='signed' needs repulsion_margin > 0; got {self.repulsion_margin}")
        if not 0.0 <= self.timestep_min < self.timestep_max <= 1.0:
            raise ValueError(
                f"need 0 <= timestep_min < timestep_max <= 1; got [{self.timestep_min}, {self.timestep_max}]"
            )
        if self.logit_std <= 0 or self.timestep_shift <= 0:
            raise ValueError(
                f"logit_std and timestep_shift must be > 0; got {self.logit_std} and {self.timestep_shift}"
            )
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"text_dropout must be in [0, 1); got {self.text_dropout}")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns=True would drop the rollout columns SRUMTrainer reads")
