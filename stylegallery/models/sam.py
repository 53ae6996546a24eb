"""SAM (Segment Anything) through transformers: the automatic masks of an image, for the release's ``use_sam``
(``region_source="sam"``, docs/method.md stage 2).

The release runs segment_anything's ``SamAutomaticMaskGenerator``. Here the same steps run on transformers'
``SamModel`` and ``SamProcessor``, through the processor's public methods: a grid of point prompts on the image and on
layers of overlapping crops, each crop embedded once, three masks per point, masks kept by predicted IoU and
stability score and dropped where they touch a crop's inner edge, then duplicates removed. transformers' own
``"mask-generation"`` pipeline is not used: its last step needs torchvision, which StyleGallery does not depend on, so
the duplicate removal (:func:`box_nms`, a greedy non-maximum suppression on the masks' boxes at IoU 0.7, first within
each crop, then between crops preferring the smaller crop's mask, as segment_anything does it) is ours.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .hub import ModelUnavailable, load_model

#: The release prefers SAM ViT-H (``sam_vit_h_4b8939.pth``; ViT-B when that is missing); this is its transformers port.
DEFAULT_SAM_MODEL = "facebook/sam-vit-huge"
#: segment_anything's ``box_nms_thresh`` and ``crop_nms_thresh``.
NMS_THRESHOLD = 0.7
#: The release's ``crop_n_points_downscale_factor``: each crop layer has half the points per side of the one above.
CROP_POINTS_DOWNSCALE = 2
#: Point prompts per model call (segment_anything's ``points_per_batch``); it changes memory, not masks.
POINTS_PER_BATCH = 64


def load_sam(name: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """SAM model and processor from a folder or Hub id. Float32 by default, as the release runs it: its masks are
    thresholded logits, and its scores filter them at 0.98 and 0.95, where half precision can tip the balance."""
    from transformers import SamModel, SamProcessor

    model, processor = load_model("SAM", name, lambda p, local: (
        SamModel.from_pretrained(p, local_files_only=local, dtype=dtype),
        SamProcessor.from_pretrained(p, local_files_only=local)))
    if model.config.model_type != "sam":  # transformers builds a random SAM from another model's folder
        raise ModelUnavailable(f"{name} is a {model.config.model_type} model, not SAM")
    return model.eval().to(device), processor


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float = NMS_THRESHOLD) -> list[int]:
    """Indices kept by greedy non-maximum suppression of (n, 4) XYXY ``boxes``: in order of descending score (ties in
    the given order), a box goes when its IoU with a box already kept is above ``threshold``.

    torchvision's ``batched_nms`` with one class, which segment_anything and transformers' pipeline call; ours, so that
    SAM needs no torchvision. Areas are ``(x1 - x0) * (y1 - y0)`` as there.
    """
    if len(boxes) == 0:
        return []
    boxes = boxes.double().cpu()
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    corner_low = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    corner_high = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    overlap = (corner_high - corner_low).clamp(min=0).prod(-1)
    union = area[:, None] + area[None, :] - overlap
    iou = torch.where(union > 0, overlap / union.clamp(min=1e-12), torch.zeros_like(union))
    dropped = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in torch.argsort(scores.double().cpu(), descending=True, stable=True).tolist():
        if not dropped[i]:
            keep.append(i)
            dropped |= iou[i] > threshold
    return keep


def rle_to_mask(rle: dict) -> np.ndarray:
    """A mask from the uncompressed, column-major run-length encoding that the processor's ``filter_masks`` returns
    (counts of False, True, False... pixels)."""
    height, width = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    return np.repeat(values, rle["counts"]).reshape(width, height).T


@torch.no_grad()
def automatic_masks(model, processor, image: Image.Image, *, points_per_side: int = 16, pred_iou_thresh: float = 0.98,
                    stability_score_thresh: float = 0.95, crop_layers: int = 1,
                    crop_points_downscale: int = CROP_POINTS_DOWNSCALE, points_per_batch: int = POINTS_PER_BATCH,
                    nms_threshold: float = NMS_THRESHOLD) -> list[np.ndarray]:
    """SAM's automatic masks of ``image``: (H, W) bool arrays at the image's size, best predicted IoU first.

    The defaults are the release's (``SamAutomaticMaskGenerator(points_per_side=16, pred_iou_thresh=0.98,
    stability_score_thresh=0.95, crop_n_layers=1, crop_n_points_downscale_factor=2)``); its
    ``min_mask_region_area`` (holes and islands under 1000 px filled or removed in each mask) is not done here.
    """
    image = image.convert("RGB")
    processor_of_images = processor.image_processor
    target = processor_of_images.size["longest_edge"]
    device, dtype = model.device, model.dtype
    full_size = (image.height, image.width)
    found = []  # per crop: (run-length masks, scores, boxes, crop box)
    for layer in range(crop_layers + 1):
        # one call per layer: the processor's grid of points has one size for all crops of a call, and a layer's
        # crops are the last 4**layer of its crop boxes up to that layer
        side = max(1, int(points_per_side / crop_points_downscale ** layer))
        crop_boxes, points, crops, labels = processor_of_images.generate_crop_boxes(
            image, target, crop_n_layers=layer, points_per_crop=side, crop_n_points_downscale_factor=1)
        first = len(crop_boxes) - 4 ** layer
        inputs = processor_of_images(images=crops[first:], return_tensors="pt")
        for c in range(len(crops) - first):
            crop_box = crop_boxes[first + c]
            embedding = model.get_image_embeddings(inputs["pixel_values"][c : c + 1].to(device, dtype))
            sizes = dict(original_sizes=inputs["original_sizes"][c : c + 1].tolist(),
                         reshaped_input_sizes=inputs["reshaped_input_sizes"][c : c + 1].tolist())
            rles, scores, boxes = [], [], []
            for start in range(0, points.shape[1], points_per_batch):
                batch = slice(start, start + points_per_batch)
                out = model(image_embeddings=embedding,
                            input_points=points[:, batch, first + c : first + c + 1].to(device, dtype),
                            input_labels=labels[:, batch, first + c : first + c + 1].to(device),
                            multimask_output=True)
                logits = processor_of_images.post_process_masks(out.pred_masks.float(), binarize=False, **sizes)
                kept, kept_scores, kept_boxes = processor_of_images.filter_masks(
                    logits[0], out.iou_scores[0].float(), full_size, crop_box, pred_iou_thresh=pred_iou_thresh,
                    stability_score_thresh=stability_score_thresh)
                rles += kept
                scores.append(kept_scores.cpu())
                boxes.append(kept_boxes.cpu())
            scores, boxes = torch.cat(scores), torch.cat(boxes)
            keep = box_nms(boxes, scores, nms_threshold)  # duplicates within the crop, best predicted IoU kept
            found += [(rles[i], scores[i], boxes[i], crop_box) for i in keep]
    if crop_layers > 0 and found:  # duplicates between crops: the mask of the smaller crop is kept
        crop_area = torch.tensor([float((b[2] - b[0]) * (b[3] - b[1])) for *_, b in found])
        keep = box_nms(torch.stack([box for _, _, box, _ in found]), 1 / crop_area, nms_threshold)
        found = [found[i] for i in sorted(keep)]
    found.sort(key=lambda entry: -float(entry[1]))
    return [rle_to_mask(rle) for rle, *_ in found]
