"""A transformers vision-language model as the evaluation judge: batched answers about images, greedy or seeded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from PIL import Image


class TransformersVLM:
    """Any image-text-to-text model of transformers with a chat template (e.g. Qwen2.5-VL-Instruct, any size).

    Args:
        model_name_or_path: a Hub id or a local folder with the model and its processor.
        device: where the model runs.
        dtype: weights dtype (`"auto"`: as saved).
        max_new_tokens: the answer's token budget.
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "auto",
        max_new_tokens: int = 512,
    ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.name = str(model_name_or_path)
        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens
        self.processor = AutoProcessor.from_pretrained(self.name)
        # Generation appends to the right end of every row of a batch, so prompts are padded on the left.
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(self.name, dtype=dtype).to(self.device).eval()

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        if seed is None:
            yield
            return
        devices = [] if self.device.type == "cpu" else [self.device]
        device_type = "cuda" if self.device.type == "cpu" else self.device.type
        with torch.random.fork_rng(devices=devices, device_type=device_type):
            torch.manual_seed(seed)
            yield

    @torch.no_grad()
    def answer(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> list[str]:
        """Answer `questions[i]` about `images[i]` in one batch; greedy unless `do_sample`, then drawn from `seed`.

        Sampling overrides the model's own top-k / top-p defaults (some judges ship `top_k=1`, which would make every
        "sampled" retry the greedy answer again); other generation defaults (e.g. a repetition penalty) apply.
        """
        conversations = [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            for question in questions
        ]
        texts = [
            self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
            for conversation in conversations
        ]
        inputs = self.processor(text=texts, images=list(images), padding=True, return_tensors="pt").to(self.device)
        decoding = (
            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            if do_sample
            else {"do_sample": False}
        )
        with self._seeded(seed):
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **decoding)
        return self.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
