"""FreiHAND v2 (Zimmermann et al. 2019) as a TFDS dataset in diffhand-jax's common schema (docs/design.md §7).

  tfds build datasets/freihand --manual_dir=/path/to/FreiHAND --data_dir=~/tensorflow_datasets \
      --file_format=array_record  # streamed by the input pipeline

Splits:
  train       every training image: n_unique annotated samples x 4 colour versions (gs, hom, sample, auto).
              Image id = idx + n_unique * k; the annotation index is id % n_unique (n_unique is the length of
              training_K.json, counted, never assumed).
  evaluation  the evaluation images. With the evaluation release's evaluation_{xyz,verts,mano}.json present
              the 3D ground truth is included (has_3d=True); without them has_3d=False and the 3D targets
              are zeros.

FreiHAND already stores metres in the OpenCV camera frame and the 21-order, so no conversion is needed. The
MANO numbers are kept raw (`mano_raw`, 61 values: 48 pose, 10 shape, 2 uv_root, 1 scale); `mano_pose` and
`mano_shape` are their first 58 (flat_hand_mean=False, as FreiHAND fits them). Vertices come from
*_verts.json, so no MANO file is needed.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from diffhand_jax.data import sources

VERSIONS = (
    'gs',
    'hom',
    'sample',
    'auto',
)  # the order of the image-id blocks (FreiHAND's sample_version)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download from https://lmb.informatik.uni-freiburg.de/resources/datasets/FreihandDataset.en.html:
  * FreiHAND_pub_v2.zip              (training + evaluation images, training annotations)
  * FreiHAND_pub_v2_eval.zip         (optional: evaluation annotations; without it the evaluation split
                                      has has_3d=False)
Unzip both into one folder (the zips have no top-level folder) and pass it as --manual_dir. It must hold
  training/rgb/%08d.jpg, training/mask/%08d.jpg,
  training_{K,xyz,verts,mano,scale}.json,
  evaluation/rgb/%08d.jpg, evaluation_{K,scale}.json [, evaluation_{xyz,verts,mano}.json]
"""


@dataclasses.dataclass(eq=False)
class FreihandConfig(tfds.core.BuilderConfig):
  """FreiHAND has nothing to configure; the class exists for `--config '{json}'` symmetry with the others."""


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for FreiHAND v2."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      FreihandConfig(name='default', description='All 4 colour versions; 224x224 frames.')
  ]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    features = sources.common_features('jpeg')
    tensor = tfds.features.Tensor
    features.update(
        {
            'mask': tfds.features.Image(
                shape=(None, None, 1),
                dtype=np.uint8,
                doc='255 on the hand, 0 elsewhere (training only; see has_mask)',
            ),
            'has_mask': tensor(shape=(), dtype=np.bool_),
            'mano_raw': tensor(
                shape=(61,),
                dtype=np.float32,
                doc="FreiHAND's 61 MANO numbers: pose 48, shape 10, uv_root 2, scale 1",
            ),
            'scale': tensor(
                shape=(), dtype=np.float32, doc='length of the middle proximal bone, metres'
            ),
            'image_id': tensor(shape=(), dtype=np.int64, doc='the number in the file name'),
            'annotation_id': tensor(
                shape=(), dtype=np.int64, doc='index into the *_K/xyz/... json lists'
            ),
            'colour_version': tfds.features.Text(
                doc="'gs', 'hom', 'sample' or 'auto' ('gs' for evaluation)"
            ),
        }
    )
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        disable_shuffling=True,
        homepage='https://lmb.informatik.uni-freiburg.de/projects/freihand/',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    return {
        'train': self._generate_examples(root, 'training'),
        'evaluation': self._generate_examples(root, 'evaluation'),
    }

  def _generate_examples(self, root: str, set_name: str):
    annotations = read_annotations(root, set_name)
    count = len(annotations['K'])
    versions = len(VERSIONS) if set_name == 'training' else 1
    found = _image_ids(os.path.join(root, set_name, 'rgb'))
    extra = sorted(i for i in found if i >= count * versions)
    if extra:
      raise sources.SourceError(
          f'{os.path.join(root, set_name, "rgb")}: image ids {extra[:5]} are beyond {count} annotations x '
          f'{versions} version(s) of {set_name}_K.json; the json files and images do not match'
      )
    for image_id in range(count * versions):
      yield image_id, make_example(root, set_name, image_id, annotations)


def _image_ids(folder: str) -> set[int]:
  if not os.path.isdir(folder):
    raise sources.SourceError(
        f'{folder}: image folder is missing (see MANUAL_DOWNLOAD_INSTRUCTIONS)'
    )
  return {int(name[:-4]) for name in os.listdir(folder) if re.fullmatch(r'\d+\.jpg', name)}


def read_annotations(root: str, set_name: str) -> dict:
  """The json lists of one set, checked for equal lengths. Keys K, scale, and xyz/verts/mano when present."""
  k_path = os.path.join(root, f'{set_name}_K.json')
  Ks = sources.read_json_list(k_path)
  out = {
      'K': Ks,
      'scale': sources.read_json_list(
          os.path.join(root, f'{set_name}_scale.json'), length=len(Ks), length_source=k_path
      ),
  }
  gt_paths = {key: os.path.join(root, f'{set_name}_{key}.json') for key in ('xyz', 'verts', 'mano')}
  present = [key for key, path in gt_paths.items() if os.path.isfile(path)]
  if set_name == 'training' or present:
    missing = [gt_paths[key] for key in gt_paths if key not in present]
    if missing:
      raise sources.SourceError(
          f'{missing[0]}: file is missing (needed with {set_name}_K.json'
          + (f'; found {[gt_paths[k] for k in present]}' if present else '')
          + ')'
      )
    for key, path in gt_paths.items():
      out[key] = sources.read_json_list(path, length=len(Ks), length_source=k_path)
  return out


def make_example(root: str, set_name: str, image_id: int, annotations: dict) -> dict:
  count = len(annotations['K'])
  index = image_id % count
  image_path = os.path.join(root, set_name, 'rgb', f'{image_id:08d}.jpg')
  image, (height, width) = sources.encodable_rgb(image_path, 'jpeg')

  def json_path(key):
    return os.path.join(root, f'{set_name}_{key}.json')

  K = sources.as_array(annotations['K'][index], (3, 3), json_path('K'), index=index)
  scale = sources.as_array(annotations['scale'][index], (), json_path('scale'), index=index)
  example = {
      'image': image,
      'K': K.astype(np.float32),
      'hand_side': 'right',
      'image_id': image_id,
      'annotation_id': index,
      'colour_version': VERSIONS[image_id // count],
      'scale': np.float32(scale),
  }
  if 'xyz' in annotations:
    xyz = sources.as_array(annotations['xyz'][index], (21, 3), json_path('xyz'), index=index)
    verts = sources.as_array(annotations['verts'][index], (778, 3), json_path('verts'), index=index)
    mano_raw = sources.as_array(annotations['mano'][index], (61,), json_path('mano'), index=index)
    example.update(
        joints_3d=xyz.astype(np.float32),
        vertices_3d=verts.astype(np.float32),
        mano_pose=mano_raw[:48].astype(np.float32),
        mano_shape=mano_raw[48:58].astype(np.float32),
        mano_raw=mano_raw.astype(np.float32),
        has_3d=True,
        bbox=sources.bbox_of_points(sources.project(verts, K)),
    )
  else:
    example.update(
        sources.empty_targets(),
        mano_raw=np.zeros(61, np.float32),
        has_3d=False,
        bbox=np.array([-0.5, -0.5, width - 0.5, height - 0.5], np.float32),
    )
  mask_path = os.path.join(root, 'training', 'mask', f'{index:08d}.jpg')
  if set_name == 'training':
    mask = sources.read_gray(mask_path, what='mask')
    if mask.shape != (height, width):
      raise sources.SourceError(
          f'{mask_path}: mask is {mask.shape}, image {image_path} is {(height, width)}'
      )
    example.update(mask=np.where(mask >= 128, 255, 0).astype(np.uint8)[..., None], has_mask=True)
  else:
    example.update(mask=np.zeros((height, width, 1), np.uint8), has_mask=False)
  return example
