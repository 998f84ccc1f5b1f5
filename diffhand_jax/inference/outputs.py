"""What a reconstructed photo becomes: its JSON record (docs/design.md §8 names the keys) and its overlay.
`predict` writes them for a folder, the app for one upload; both from `pipeline.PhotoHands`."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from diffhand_jax.geometry import render
from diffhand_jax.inference import full_frame, pipeline, sampling

UNITS = (
    'metres; camera frame x right, y down, z forward (OpenCV); joints and vertices root-relative '
    "(wrist at 0), joints_camera and vertices_camera in the photo's camera frame; box, crop_box and "
    'keypoints_2d in photo pixels'
)
CAMERA_CONVENTION = (
    'weak perspective of model-space X = metres / vertex_scale: u = s*X + tx, v = s*Y + ty, '
    'u = 2x/W - 1 over the crop'
)


def rounded(array: Any) -> list:
  """An array as nested lists of floats rounded to 1e-6 (a micrometre for metres)."""
  return np.round(np.asarray(array, np.float64), 6).tolist()


def settings(
    samplers: sampling.SamplerCache, options: pipeline.Options, *, color_by_uncertainty: bool
) -> dict[str, Any]:
  """How the photos were reconstructed: the JSON's 'settings'."""
  config = samplers.run.config
  return dict(
      options.settings(samplers),
      img_size=int(config.model.img_size),
      vertex_scale=float(config.model.vertex_scale),
      box_scale=options.box_scale,
      detector=options.detector_name(),
      min_hand_score=options.min_hand_score,
      color_by_uncertainty=bool(color_by_uncertainty),
      workdir=os.path.abspath(samplers.run.workdir),
      tta=None if options.tta is None else options.tta.settings(),
  )


def hand_record(hand: pipeline.Hand, obj_name: str) -> dict[str, Any]:
  """One hand of the JSON's 'hands' list; `obj_name` names its mesh file."""
  crop = hand.crop
  record = {
      'box': None if crop.box is None else rounded(crop.box),
      'box_source': crop.box_source,
      'hand_side': hand.side,
      'side_source': crop.side_source,
      'score': crop.score,
      'side_score': crop.side_score,
      'keypoints_2d': None if crop.keypoints_2d is None else rounded(crop.keypoints_2d),
      'keypoints_3d': None if crop.keypoints_3d is None else rounded(crop.keypoints_3d),
      'crop_box': rounded(crop.crop_box),
      'placement': hand.placement,
      'reprojection_error_px': hand.reprojection_error_px,
      'landmarks_3d_pa_mpjpe_mm': hand.landmarks_3d_pa_mpjpe_mm,
      'mesh': hand.mesh,
      'joints': rounded(hand.joints),
      'vertices': rounded(hand.vertices),
      'root': rounded(hand.root),
      'joints_camera': rounded(hand.joints_camera),
      'vertices_camera': rounded(hand.vertices_camera),
      'uncertainty': hand.uncertainty,
      'vertex_uncertainty': rounded(hand.vertex_uncertainty),
      'orientation_uncertainty_deg': hand.orientation_uncertainty_deg,
      'camera': [float(c) for c in hand.camera],
      'obj': obj_name,
  }
  if hand.mano is not None:
    record['mano'] = {
        key: rounded(value) if key in ('pose', 'betas', 'trans') else value
        for key, value in hand.mano.items()
    }
  if hand.network is not None:
    record['network'] = {
        key: value if value is None or isinstance(value, float) else rounded(value)
        for key, value in hand.network.items()
    }
  return record


def landmark_summary(results: Sequence[pipeline.PhotoHands]) -> str | None:
  """One line on how the hands sit on the detector's landmarks: the median reprojection error (px) and
  the median PA-MPJPE against its 3D landmarks (mm), over the hands that have them; None if none."""
  hands = [hand for result in results for hand in result.hands]
  pixels = [h.reprojection_error_px for h in hands if h.reprojection_error_px is not None]
  errors = [h.landmarks_3d_pa_mpjpe_mm for h in hands if h.landmarks_3d_pa_mpjpe_mm is not None]
  if not pixels and not errors:
    return None
  parts = [f'{len(hands)} hand(s)']
  if pixels:
    parts.append(f'joints {np.median(pixels):.1f} px from the landmarks (median)')
  if errors:
    parts.append(
        f"PA-MPJPE {np.median(errors):.1f} mm against the detector's 3D landmarks (median)"
    )
  return ', '.join(parts)


def obj_names(result: pipeline.PhotoHands, stem: str) -> list[str]:
  """The mesh file of each of the photo's hands: STEM_handI.obj."""
  return [f'{stem}_hand{number}.obj' for number in range(len(result.hands))]


def photo_record(
    result: pipeline.PhotoHands, stem: str, settings_record: dict[str, Any]
) -> dict[str, Any]:
  """The photo's JSON: its size, camera, hands and the settings."""
  height, width = result.photo.image.shape[:2]
  return {
      'image': result.photo.name,
      'image_size': [height, width],
      'focal_length': float(result.focal),
      'focal_source': result.focal_source,
      'K': rounded(result.K),
      'units': UNITS,
      'camera_convention': CAMERA_CONVENTION,
      'hands': [hand_record(hand, obj) for hand, obj in zip(result.hands, obj_names(result, stem))],
      'settings': settings_record,
  }


def overlay(
    result: pipeline.PhotoHands, max_size: int = 0, color_by_uncertainty: bool = False
) -> np.ndarray:
  """Every hand's mesh over the photo, uint8, its longer side at most max_size (0: as is); coloured
  by each hand's vertex_uncertainty on one scale per photo, so that its hands compare by colour."""
  colors = None
  if color_by_uncertainty:
    per_vertex = [hand.vertex_uncertainty for hand in result.hands]
    scale = max(max(float(v.max()) for v in per_vertex), 1e-3)
    colors = [render.uncertainty_colors(v, scale)[:, :3] / 255.0 for v in per_vertex]
  meshes = [(hand.vertices_camera, hand.faces) for hand in result.hands]
  return full_frame.draw_hands(result.photo.image, meshes, result.K, max_size, colors=colors)
