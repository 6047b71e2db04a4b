"""Region proposers: boxes in the pixels of the image they were given, inside it, filtered and ordered."""

from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from trl_srum.rollout import RolloutConfig, build_proposer
from trl_srum.rollout.proposals import (
    ForegroundComponentsProposer,
    GroundingProposer,
    ProposalFilter,
    RegionProposal,
    SegmentAnythingProposer,
    TransformersSamProposer,
    boxes_from_masks,
    object_phrases,
    propose_regions,
)
from trl_srum.shapes import BACKGROUND, render_scene

from .utils import all_boxes_inside, scripted_bagel


SCENE = {
    "objects": [{"shape": "circle", "color": "red", "count": 1}, {"shape": "square", "color": "blue", "count": 2}],
    "relation": None,
}
# A wide canvas with the scene pasted at an offset: x and y cannot be swapped or rescaled unnoticed.
CANVAS_SIZE, OFFSET = (80, 48), (28, 4)


def shapes_image() -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    scene, objects = render_scene(SCENE, size=40, seed=0)
    canvas = Image.new("RGB", CANVAS_SIZE, BACKGROUND)
    canvas.paste(scene, OFFSET)
    dx, dy = OFFSET
    return canvas, [(x1 + dx, y1 + dy, x2 + dx, y2 + dy) for x1, y1, x2, y2 in (o["box"] for o in objects)]


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# --------------------------------------------------------------------------------------------------- the filter
def test_filter_drops_small_and_huge_boxes_and_duplicates_and_keeps_the_most_confident_first():
    size = (100, 100)
    boxes = torch.tensor(
        [
            [0, 0, 100, 100],  # 0: the whole image (background), area 1.0
            [10, 10, 40, 40],  # 1: area 0.09
            [11, 11, 41, 41],  # 2: duplicate of 1 (IoU 0.88), more confident
            [60, 60, 61, 61],  # 3: a speck, area 0.0001
            [50, 10, 90, 30],  # 4: area 0.08
            [10, 60, 30, 90],  # 5: area 0.06
        ],
        dtype=torch.float32,
    )
    confidences = torch.tensor([0.99, 0.5, 0.8, 0.95, 0.6, 0.7])
    keep = ProposalFilter(min_area_fraction=0.002, max_area_fraction=0.8, nms_iou=0.7, max_regions=10)
    assert keep(boxes, confidences, size) == [2, 5, 4]
    assert ProposalFilter(0.002, 0.8, 0.7, max_regions=2)(boxes, confidences, size) == [2, 5]
    # without NMS (IoU threshold 1) the duplicate stays, in confidence order
    assert ProposalFilter(0.002, 0.8, 1.0, 10)(boxes, confidences, size) == [2, 5, 4, 1]
    # the size bounds are fractions of the image given
    assert ProposalFilter(0.0, 1.0, 1.0, 10)(boxes, confidences, size) == [0, 3, 2, 5, 4, 1]
    # on a 10x larger image only the former whole-image box (now 1%) is big enough
    assert ProposalFilter(0.002, 0.8, 0.7, 10)(boxes, confidences, (1000, 1000)) == [0]
    assert keep(torch.zeros((0, 4)), torch.zeros(0), size) == []


def test_boxes_from_masks_are_end_exclusive_pixels():
    masks = torch.zeros((2, 6, 10), dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 5, 9] = True
    assert boxes_from_masks(masks).tolist() == [[2, 1, 5, 3], [9, 5, 10, 6]]
    assert boxes_from_masks(torch.zeros((0, 6, 10), dtype=torch.bool)).shape == (0, 4)


def test_propose_regions_clamps_boxes_into_the_image_and_drops_empty_ones():
    def proposer(image, prompt):
        return [
            RegionProposal((-5.0, -2.0, 10.0, 8.0), "a", 0.9, "test"),
            RegionProposal((30.0, 10.0, 45.0, 30.0), "b", 0.8, "test"),
            RegionProposal((40.0, 0.0, 50.0, 5.0), "c", 0.7, "test"),  # entirely right of the image
            RegionProposal((5.0, 5.0, 5.0, 9.0), "d", 0.6, "test"),  # no width
        ]

    proposals = propose_regions(proposer, Image.new("RGB", (32, 24)), "x")
    assert [(p.bbox, p.label) for p in proposals] == [((0.0, 0.0, 10.0, 8.0), "a"), ((30.0, 10.0, 32.0, 24.0), "b")]
    assert propose_regions(None, Image.new("RGB", (32, 24)), "x") == []


# --------------------------------------------------------------------------------------------------- components
def test_foreground_components_find_the_drawn_shapes():
    image, expected = shapes_image()
    proposals = ForegroundComponentsProposer()(image, "a red circle and two blue squares")
    boxes = [p.bbox for p in proposals]
    assert len(boxes) == len(expected) == 3
    assert all_boxes_inside(boxes, image.size)
    # every drawn instance is found (antialiased rims may fall under the colour threshold: IoU, not equality)
    for box in expected:
        assert max(iou(box, found) for found in boxes) > 0.7, (box, boxes)
    # bigger components first
    assert [p.confidence for p in proposals] == sorted((p.confidence for p in proposals), reverse=True)
    assert {p.source for p in proposals} == {"components"}


def test_foreground_components_of_a_blank_image_are_none():
    assert ForegroundComponentsProposer()(Image.new("RGB", (32, 16), BACKGROUND), "x") == []


# --------------------------------------------------------------------------------------------------- segment-anything
@pytest.fixture(scope="module")
def tiny_sam():
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    with torch.random.fork_rng():
        torch.manual_seed(0)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=2,
                embed_dim=32,
                img_size=64,
                mlp_ratio=2,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=2,
                patch_size=16,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=(1,),
                window_size=2,
                out_chans=32,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
                transformer_dim=32,
                iou_head_depth=2,
                iou_head_hidden_dim=16,
            ),
        )
    return sam.eval()


def test_segment_anything_boxes_are_the_masks_boxes_in_image_pixels(tiny_sam):
    image, _ = shapes_image()
    keep = ProposalFilter(min_area_fraction=0.002, max_area_fraction=0.95, nms_iou=0.7, max_regions=4)
    # random weights: accept every mask the generator finds
    proposer = SegmentAnythingProposer(
        tiny_sam, keep=keep, points_per_side=4, pred_iou_thresh=-100.0, stability_score_thresh=-100.0
    )
    with torch.no_grad():
        records = proposer.generator.generate(np.asarray(image))
        proposals = proposer(image, "a red circle")
    assert records and all(r["segmentation"].shape == (image.height, image.width) for r in records)
    mask_boxes = {tight_box(r["segmentation"]): r["predicted_iou"] * r["stability_score"] for r in records}
    assert 0 < len(proposals) <= 4
    for proposal in proposals:
        assert proposal.bbox in mask_boxes and proposal.source == "sam"
        assert proposal.confidence == pytest.approx(mask_boxes[proposal.bbox])
    assert all_boxes_inside([p.bbox for p in proposals], image.size)
    assert [p.confidence for p in proposals] == sorted((p.confidence for p in proposals), reverse=True)


def test_segment_anything_checkpoint_type_is_checked():
    with pytest.raises(ValueError, match="unknown SAM model type 'vit_x'"):
        SegmentAnythingProposer.from_checkpoint("missing.pth", "vit_x")


@pytest.fixture(scope="module")
def tiny_hf_sam():
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=64,
            image_size=64,
            patch_size=16,
            output_channels=32,
            window_size=2,
            global_attn_indexes=[1],
            num_pos_feats=16,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=32, image_size=64, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, iou_head_hidden_dim=16
        ),
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SamModel(config).eval()
    processor = SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    return model, processor


def test_transformers_sam_boxes_are_the_masks_boxes_in_image_pixels(tiny_hf_sam, tmp_path):
    model, processor = tiny_hf_sam
    image, _ = shapes_image()
    # random weights: accept every mask, and keep near-duplicates for the proposer's own filter
    settings = {
        "points_per_crop": 4,
        "pred_iou_thresh": -100.0,
        "stability_score_thresh": -100.0,
        "crops_nms_thresh": 0.95,
    }
    keep = ProposalFilter(min_area_fraction=0.0, max_area_fraction=1.0, nms_iou=1.0, max_regions=100)
    proposer = TransformersSamProposer(model, processor, keep=keep, **settings)
    with torch.no_grad():
        output = proposer.pipeline(image, **settings)
        proposals = proposer(image, "a red circle")
    masks = [np.asarray(mask, dtype=bool) for mask in output["masks"]]
    assert masks and all(mask.shape == (image.height, image.width) for mask in masks)
    expected = sorted(
        ((tight_box(m), float(s)) for m, s in zip(masks, output["scores"].flatten(), strict=True) if m.any()),
        key=lambda item: -item[1],
    )
    assert len(expected) > 2
    assert [(p.bbox, pytest.approx(p.confidence)) for p in proposals] == expected
    assert all_boxes_inside([p.bbox for p in proposals], image.size)

    # what `proposer="sam_hf"` builds from a saved model folder, with the configured filter
    model.save_pretrained(tmp_path / "sam")
    processor.save_pretrained(tmp_path / "sam")
    config = RolloutConfig(
        proposer="sam_hf", sam_checkpoint=str(tmp_path / "sam"), max_regions=2, max_region_area=1.0, nms_iou=1.0
    )
    built = build_proposer(config, model=None)
    assert isinstance(built, TransformersSamProposer) and built.keep.max_regions == 2
    built.call_kwargs = settings
    with torch.no_grad():
        assert [p.bbox for p in built(image, "x")] == [box for box, _ in expected[:2]]


# --------------------------------------------------------------------------------------------------- grounding
@pytest.mark.parametrize(
    ("prompt", "phrases"),
    [
        ("a red cube to the left of two balls", ["a red cube", "two balls"]),
        ("A cat on the right side of a dog.", ["A cat", "a dog"]),
        ("two red circles above a green triangle", ["two red circles", "a green triangle"]),
        ("a man in front of a car, with a hat", ["a man", "a car", "a hat"]),
        ("a cat on top of a table beside a lamp", ["a cat", "a table", "a lamp"]),
        ("a dog and a Dog", ["a dog"]),
        ("a painting of a sandwich", ["a painting of a sandwich"]),  # 'in' and 'and' inside words do not split
        ("   ", []),
    ],
)
def test_object_phrases(prompt, phrases):
    assert object_phrases(prompt) == phrases


def test_grounding_proposer_asks_the_model_for_each_phrase():
    model = scripted_bagel(supports_grounding=True, prompt_style="concise")
    image = Image.new("RGB", (32, 16), "white")
    proposals = GroundingProposer(model)(image, "a green triangle above a yellow circle")
    assert [p.label for p in proposals] == ["a green triangle", "a yellow circle"]
    assert {p.source for p in proposals} == {"grounding"}
    # the scripted model answers with one half of the image, in the image's own pixels
    assert {p.bbox for p in proposals} <= {(0.0, 0.0, 16.0, 16.0), (16.0, 0.0, 32.0, 16.0)}
    assert GroundingProposer(model)(image, " ") == []
    with pytest.raises(ValueError, match="does not support grounding"):
        GroundingProposer(scripted_bagel())
