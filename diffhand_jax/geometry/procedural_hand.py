"""A licence-free procedural hand in MANO format (778 vertices, MANO's 16-joint tree).

Run ``python -m diffhand_jax.make_procedural_hand`` (it writes diffhand_jax/assets/procedural_hand.npz) to
regenerate the shipped file; the generator is deterministic and needs only numpy and scipy.

How the mesh is built (all by explicit construction, no marching cubes):

* A palm tube of 8 rings x 40 vertices runs from the wrist to the knuckles. Its cross-sections are
  rounded rectangles (superellipses); each ring's 40 columns are grouped into 4 fingers x (5 dorsal +
  5 palmar) columns.
* At the finger webs the palm's last ring *is* the union of the four fingers' base rings (10 vertices
  each); the three webs between neighbouring fingers are closed by one quad each.
* The thumb leaves through a hole cut into the palm's radial side (3 x 2 grid cells, whose boundary
  loop of 10 vertices is the thumb's base ring).
* Each digit is a tube of 8 elliptic rings of 10 vertices along its bones, closed by a hemispherical
  cap ending in one tip vertex. The wrist is closed by a small cap (an inner ring and a centre vertex);
  the inner ring's size makes the count exactly 778.
* The result is a closed, consistently oriented genus-0 surface: 778 vertices, 1552 triangles.

Layout (chosen to resemble MANO's right-hand template): fingers point along -x, the back of the hand
faces +y (palm towards -y), the thumb lies on the +z side; the wrist joint is at (0.0957, 0.0064,
0.0062) m like MANO's; wrist to middle fingertip is 18.7 cm.

Other arrays:

* weights: each digit vertex is blended between the joints around it with a smoothstep in the
  distance along the digit; palm vertices blend towards the knuckles and (near the thenar) the thumb's
  CMC joint; then 8 steps of mesh-Laplacian smoothing.
* J_regressor: for each joint, non-negative weights summing to 1 over the vertices within 2 cm whose
  weighted mean is the joint (non-negative least squares), so regressed joints sit inside the surface.
* shapedirs (778, 3, 10): central differences of the generator w.r.t. ten named proportions, scaled to
  one standard deviation each (see ``SHAPE_PARAMETERS``).
* posedirs: zero (no pose correctives).
* pose_axes / pose_limits: per finger joint the (flex, abduction, twist) axes and angle ranges.
* hands_mean: a slightly curled pose; hands_components: the PCA basis of 20000 sampled poses.
* tip_ids: the fingertip vertices (thumb, index, middle, ring, little), placed at FreiHAND's ids
  (744, 320, 443, 555, 672) so that ``mano.TIP_IDS['freihand']`` works for this hand too.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import nnls

from diffhand_jax.geometry import conventions, mano, render

NUM_VERTICES = 778
RING = 10  # vertices per digit ring
PALM_COLUMNS = 4 * RING
ORIGIN = np.array([0.0957, 0.0064, 0.0062])  # wrist position, as in MANO's right template
TARGET_TIP_IDS = conventions.TIP_IDS['freihand']  # thumb, index, middle, ring, little

# Ten shape directions: (name, relative change for beta = 1).
SHAPE_PARAMETERS = (
    ('scale', 0.06),
    ('finger_length', 0.06),
    ('palm_width', 0.06),
    ('finger_thickness', 0.10),
    ('thumb_length', 0.07),
    ('palm_length', 0.05),
    ('palm_thickness', 0.08),
    ('little_length', 0.07),
    ('digit_ratio', 0.04),  # index longer / ring shorter
    ('thumb_thickness', 0.08),
)


@dataclasses.dataclass(frozen=True)
class Digit:
  """One finger (or the thumb) in local hand coordinates (u distal, w radial, h dorsal), metres."""

  name: str
  joints: tuple[int, int, int]  # MANO joint ids of its three joints
  base: np.ndarray  # position of its first joint (MCP; CMC for the thumb)
  directions: tuple[np.ndarray, np.ndarray, np.ndarray]  # unit bone directions
  lengths: tuple[float, float, float]  # first, second, third bone (third: to the tip)
  radii_w: tuple[float, float, float, float]  # half-width at joints 1, 2, 3 and at the tip
  radii_h: tuple[float, float, float, float]  # half-thickness
  dorsal: np.ndarray  # reference 'nail' direction


def _unit(vector) -> np.ndarray:
  vector = np.asarray(vector, np.float64)
  return vector / np.linalg.norm(vector)


# Extra narrowing of the fingers towards the tip (at joints 1, 2, 3 and the tip), so they taper as real
# fingers do rather than run as tubes.
FINGER_TAPER = (1.0, 0.96, 0.91, 0.84)


def _digits(p: dict[str, float]) -> list[Digit]:
  """The five digits (thumb first, then index, middle, ring, little) for shape parameters p."""
  width, length = p['palm_width'], p['palm_length']
  thick, flen = p['finger_thickness'], p['finger_length']
  ratio = p['digit_ratio']
  specs = [  # name, joints, (u, w, h) of MCP, spread (deg), lengths, radii_w, radii_h, length factor
      (
          'index',
          (1, 2, 3),
          (0.085, 0.026, 0.000),
          4.0,
          (0.043, 0.026, 0.022),
          (0.0095, 0.0086, 0.0077, 0.0069),
          (0.0086, 0.0078, 0.0068, 0.0058),
          flen * (1 + ratio),
      ),
      (
          'middle',
          (4, 5, 6),
          (0.089, 0.0055, 0.001),
          0.0,
          (0.047, 0.029, 0.023),
          (0.0098, 0.0089, 0.0079, 0.0071),
          (0.0089, 0.0081, 0.0071, 0.0060),
          flen,
      ),
      (
          'ring',
          (10, 11, 12),
          (0.085, -0.0145, 0.000),
          -4.5,
          (0.044, 0.028, 0.022),
          (0.0092, 0.0083, 0.0075, 0.0067),
          (0.0083, 0.0076, 0.0067, 0.0057),
          flen * (1 - ratio),
      ),
      (
          'little',
          (7, 8, 9),
          (0.078, -0.0325, -0.002),
          -10.0,
          (0.035, 0.021, 0.020),
          (0.0082, 0.0074, 0.0066, 0.0059),
          (0.0074, 0.0067, 0.0060, 0.0052),
          flen * p['little_length'],
      ),
  ]
  digits = []
  # Thumb: CMC inside the thenar, bones pointing forward, radially and a little palmar.
  tlen, tthick = p['thumb_length'], p['thumb_thickness']
  thumb_dirs = (_unit([0.74, 0.58, -0.36]), _unit([0.84, 0.46, -0.28]), _unit([0.89, 0.39, -0.22]))
  digits.append(
      Digit(
          name='thumb',
          joints=(13, 14, 15),
          base=np.array([0.018 * length, 0.021 * width, -0.010 * p['palm_thickness']]),
          directions=thumb_dirs,
          lengths=(0.044 * tlen, 0.032 * tlen, 0.029 * tlen),
          radii_w=tuple(r * tthick for r in (0.0175, 0.0112, 0.0100, 0.0088)),
          radii_h=tuple(r * tthick for r in (0.0150, 0.0100, 0.0086, 0.0073)),
          dorsal=_unit([0.0, 0.75, 0.66]),
      )
  )
  for name, joints, mcp, spread, lengths, rw, rh, factor in specs:
    # spread rotates the finger from u towards w (radial)
    direction = np.array([np.cos(np.deg2rad(spread)), np.sin(np.deg2rad(spread)), 0.0])
    digits.append(
        Digit(
            name=name,
            joints=joints,
            base=np.array([mcp[0] * length, mcp[1] * width, mcp[2] * p['palm_thickness']]),
            directions=(direction, direction, direction),
            lengths=tuple(length * factor for length in lengths),
            radii_w=tuple(1.14 * r * thick * t for r, t in zip(rw, FINGER_TAPER)),
            radii_h=tuple(1.12 * r * thick * t for r, t in zip(rh, FINGER_TAPER)),
            dorsal=np.array([0.0, 0.0, 1.0]),
        )
    )
  return digits


def _digit_frame(
    digit: Digit, s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
  """Centre, axis d, lateral a and dorsal b directions, and half-axes at distance s along a digit."""
  cumulative = np.concatenate([[0.0], np.cumsum(digit.lengths)])
  joints = [digit.base]
  for direction, length in zip(digit.directions, digit.lengths):
    joints.append(joints[-1] + direction * length)
  bone = int(np.clip(np.searchsorted(cumulative, s, side='right') - 1, 0, 2))
  centre = joints[bone] + digit.directions[bone] * (s - cumulative[bone])
  # Smoothly turn the frame at joints (within 4 mm) between neighbouring bone directions.
  direction = digit.directions[bone]
  for j in (1, 2):
    blend = np.clip((s - cumulative[j] + 0.004) / 0.008, 0.0, 1.0)
    if abs(s - cumulative[j]) < 0.004:
      direction = _unit((1 - blend) * digit.directions[j - 1] + blend * digit.directions[j])
  dorsal = _unit(digit.dorsal - np.dot(digit.dorsal, direction) * direction)
  lateral = np.cross(dorsal, direction)
  knots = np.array([0.0, cumulative[1], cumulative[2], cumulative[3]])
  total = cumulative[3]
  rw = float(np.interp(s, knots, digit.radii_w))
  rh = float(np.interp(s, knots, digit.radii_h))
  # Hemispherical cap over the last tip radius.
  cap_radius = digit.radii_w[3]
  cap_start = total - cap_radius
  if s > cap_start:
    factor = np.sqrt(max(0.0, 1.0 - ((s - cap_start) / cap_radius) ** 2))
    rw, rh = rw * factor, rh * factor
  return centre, direction, lateral, dorsal, rw, rh


def _ring_positions(digit: Digit) -> list[float]:
  """Distances along the digit of its 8 rings after the base ring (the tip vertex comes after)."""
  l1, l2, l3 = digit.lengths
  r = digit.radii_w[3]
  total = l1 + l2 + l3
  first = 0.70 * l1 if digit.name == 'thumb' else 0.62 * l1
  return [
      first,
      l1,
      l1 + 0.5 * l2,
      l1 + l2,
      l1 + l2 + 0.42 * l3,
      total - 0.55 * r,
      total - 0.25 * r,
      total - 0.08 * r,
  ]


def _web_position(digit: Digit) -> float:
  return 0.30 * digit.lengths[0]


def _ellipse_ring(digit: Digit, s: float) -> np.ndarray:
  centre, _, lateral, dorsal, rw, rh = _digit_frame(digit, s)
  phi = 2 * np.pi * (np.arange(RING) + 0.5) / RING  # 0..4 dorsal (radial -> ulnar), 5..9 palmar
  return centre + rw * np.cos(phi)[:, None] * lateral + rh * np.sin(phi)[:, None] * dorsal


# ---------------------------------------------------------------------------------------------
# Palm cross-sections
# ---------------------------------------------------------------------------------------------

PALM_LEVELS = (0.0, 0.14, 0.28, 0.42, 0.56, 0.70, 0.84, 1.0)
THUMB_HOLE_LEVELS = (2, 5)  # rings 2..5 (3 cells)
THUMB_HOLE_COLUMNS = (38, 39, 0)  # 2 cells around the radial edge
WRIST_CAP_U = -0.008


def _palm_section(tau: float, p: dict[str, float]) -> tuple[float, float, float, float, float]:
  keys = np.array([0.0, 0.35, 0.7, 1.0])
  half_w = np.interp(tau, keys, [0.028, 0.0365, 0.0395, 0.0385]) * p['palm_width']
  half_h = np.interp(tau, keys, [0.018, 0.0165, 0.0150, 0.0125]) * p['palm_thickness']
  # Superellipse exponents: 2 is an ellipse; a little above it rounds the palm's edges like a real palm.
  exponent = np.interp(tau, keys, [2.2, 2.5, 2.6, 2.6])
  centre_w = np.interp(tau, keys, [0.0, -0.001, -0.0025, -0.0025]) * p['palm_width']
  centre_h = np.interp(tau, keys, [0.0, -0.001, -0.001, 0.0]) * p['palm_thickness']
  return half_w, half_h, exponent, centre_w, centre_h


def _palm_ring(
    tau: float, digits: list[Digit], p: dict[str, float]
) -> tuple[np.ndarray, np.ndarray]:
  """(40, 3) points of the palm ring at level tau and their angles (40,) around the section."""
  half_w, half_h, exponent, centre_w, centre_h = _palm_section(tau, p)
  psi = np.linspace(0.0, 2 * np.pi, 4001)
  cw, sw = np.cos(psi), np.sin(psi)
  w = centre_w + half_w * np.sign(cw) * np.abs(cw) ** (2 / exponent)
  h = centre_h + half_h * np.sign(sw) * np.abs(sw) ** (2 / exponent)
  arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(w), np.diff(h)))])
  fingers = digits[1:]  # index, middle, ring, little
  centres_mcp = np.array([d.base[1] for d in fingers])
  half_w1, _, _, centre_w1, _ = _palm_section(1.0, p)
  boundaries = (
      0.5 * (centres_mcp[:-1] + centres_mcp[1:]) - centre_w1
  ) * half_w / half_w1 + centre_w
  half = len(psi) // 2
  # dorsal half: psi in [0, pi], w decreasing; palmar half: psi in [pi, 2 pi], w increasing.
  dorsal_cuts = (
      [arc[0]] + [np.interp(-b, -w[: half + 1], arc[: half + 1]) for b in boundaries] + [arc[half]]
  )
  palmar_cuts = (
      [arc[half]] + [np.interp(b, w[half:], arc[half:]) for b in boundaries[::-1]] + [arc[-1]]
  )
  fractions = (np.arange(RING // 2) + 0.5) / (RING // 2)
  targets = []
  for cuts in (dorsal_cuts, palmar_cuts):
    for i in range(4):
      targets.extend(cuts[i] + fractions * (cuts[i + 1] - cuts[i]))
  targets = np.array(targets)
  ring_w = np.interp(targets, arc, w)
  ring_h = np.interp(targets, arc, h)
  ring_psi = np.interp(targets, arc, psi)
  # Distal position: follows the knuckle line of the fingers (interpolated across the width).
  order = np.argsort(centres_mcp)
  mcp_u = np.array([d.base[0] for d in fingers])
  scale = half_w1 / half_w
  u_mcp = np.interp(centre_w1 + (ring_w - centre_w) * scale, centres_mcp[order], mcp_u[order])
  ring_u = WRIST_CAP_U + tau * (u_mcp - WRIST_CAP_U)
  return np.stack([ring_u, ring_w, ring_h], axis=1), ring_psi


# ---------------------------------------------------------------------------------------------
# Mesh assembly
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Mesh:
  points: list
  faces: list
  digit_of: list  # -1 palm / wrist cap, else digit index (0 thumb .. 4 little)
  s_along: list  # distance along the digit (digit vertices), nan otherwise

  def add(self, points: np.ndarray, digit: int = -1, s: float = np.nan) -> np.ndarray:
    start = len(self.points)
    for point in np.atleast_2d(points):
      self.points.append(np.asarray(point, np.float64))
      self.digit_of.append(digit)
      self.s_along.append(s)
    return np.arange(start, len(self.points))

  def strip(self, ring_a: np.ndarray, ring_b: np.ndarray) -> None:
    """Quads between two loops of equal size, both running the same way round the tube a -> b."""
    n = len(ring_a)
    for i in range(n):
      j = (i + 1) % n
      self.faces.append((ring_a[i], ring_a[j], ring_b[j]))
      self.faces.append((ring_a[i], ring_b[j], ring_b[i]))

  def fan(self, ring: np.ndarray, apex: int) -> None:
    n = len(ring)
    for i in range(n):
      self.faces.append((ring[i], ring[(i + 1) % n], apex))

  def zipper(
      self, ring_a: np.ndarray, angles_a: np.ndarray, ring_b: np.ndarray, angles_b: np.ndarray
  ) -> None:
    """Triangulates the band between loops of different sizes, merging them by angle."""
    na, nb = len(ring_a), len(ring_b)
    i = j = 0
    while i < na or j < nb:
      next_a = angles_a[i + 1] if i + 1 < na else angles_a[0] + 2 * np.pi
      next_b = angles_b[j + 1] if j + 1 < nb else angles_b[0] + 2 * np.pi
      if j >= nb or (i < na and next_a <= next_b):
        self.faces.append((ring_a[i % na], ring_a[(i + 1) % na], ring_b[j % nb]))
        i += 1
      else:
        self.faces.append((ring_a[i % na], ring_b[(j + 1) % nb], ring_b[j % nb]))
        j += 1


def _boundary_loop(faces: list, vertex_set: set) -> list[int]:
  """Chains the reversed boundary half-edges among `vertex_set` into one loop."""
  half_edges = set()
  for face in faces:
    for k in range(3):
      half_edges.add((face[k], face[(k + 1) % 3]))
  reversed_edges = {}
  for a, b in half_edges:
    if (b, a) not in half_edges and a in vertex_set and b in vertex_set:
      reversed_edges[b] = a
  start = min(reversed_edges)
  loop = [start]
  while True:
    nxt = reversed_edges[loop[-1]]
    if nxt == start:
      break
    loop.append(nxt)
  return loop


def _build_mesh(p: dict[str, float]) -> tuple[_Mesh, list[Digit], dict]:
  digits = _digits(p)
  mesh = _Mesh([], [], [], [])
  # Palm rings 0..7, then the split ring made of the four finger base rings.
  palm_ids = []
  palm_angles = []
  for tau in PALM_LEVELS:
    ring, psi = _palm_ring(tau, digits, p)
    palm_ids.append(mesh.add(ring))
    palm_angles.append(psi)
  base_rings = []
  for index in range(1, 5):
    digit = digits[index]
    base_rings.append(
        mesh.add(_ellipse_ring(digit, _web_position(digit)), index, _web_position(digit))
    )
  half = RING // 2
  split = np.concatenate(
      [ring[:half] for ring in base_rings] + [ring[half:] for ring in base_rings[::-1]]
  )
  # Palm faces, with the thumb hole left out.
  lo, hi = THUMB_HOLE_LEVELS
  hole_cells = {(level, col) for level in range(lo, hi) for col in THUMB_HOLE_COLUMNS[:-1]}
  rings = palm_ids + [split]
  for level in range(len(rings) - 1):
    a, b = rings[level], rings[level + 1]
    for i in range(PALM_COLUMNS):
      if (level, i) in hole_cells:
        continue
      j = (i + 1) % PALM_COLUMNS
      mesh.faces.append((a[i], a[j], b[j]))
      mesh.faces.append((a[i], b[j], b[i]))
  # Webs between neighbouring fingers.
  for k in range(3):
    radial, ulnar = base_rings[k], base_rings[k + 1]
    mesh.faces.append((radial[half - 1], ulnar[0], ulnar[RING - 1]))
    mesh.faces.append((radial[half - 1], ulnar[RING - 1], radial[half]))
  # Fingers: 8 rings each and a tip vertex.
  tip_vertices = {}
  for index in range(1, 5):
    digit = digits[index]
    previous = base_rings[index - 1]
    for s in _ring_positions(digit):
      current = mesh.add(_ellipse_ring(digit, s), index, s)
      mesh.strip(previous, current)
      previous = current
    total = sum(digit.lengths)
    centre, direction, _, _, _, _ = _digit_frame(digit, total)
    tip = mesh.add(centre, index, total)[0]
    mesh.fan(previous, tip)
    tip_vertices[index] = tip
  # Thumb: base loop = the hole boundary.
  hole_vertices = {
      int(palm_ids[level][col]) for level in range(lo, hi + 1) for col in THUMB_HOLE_COLUMNS
  }
  loop = np.array(_boundary_loop(mesh.faces, hole_vertices))
  thumb = digits[0]
  first_s = _ring_positions(thumb)[0]
  ring = _ellipse_ring(thumb, first_s)
  loop_points = np.array([mesh.points[v] for v in loop])
  # Same turning sense as the loop, and the rotation that best aligns vertex k with loop vertex k.
  centre = loop_points.mean(axis=0)
  loop_normal = np.sum(
      np.cross(loop_points - centre, np.roll(loop_points, -1, axis=0) - centre), axis=0
  )
  ring_normal = np.sum(
      np.cross(ring - ring.mean(0), np.roll(ring, -1, axis=0) - ring.mean(0)), axis=0
  )
  order = np.arange(RING) if np.dot(loop_normal, ring_normal) > 0 else np.arange(RING)[::-1]
  costs = [
      np.sum(np.linalg.norm(loop_points - ring[np.roll(order, -k)], axis=1)) for k in range(RING)
  ]
  thumb_order = np.roll(order, -int(np.argmin(costs)))
  previous = loop
  for s in _ring_positions(thumb):
    current = mesh.add(_ellipse_ring(thumb, s)[thumb_order], 0, s)
    mesh.strip(previous, current)
    previous = current
  total = sum(thumb.lengths)
  tip = mesh.add(_digit_frame(thumb, total)[0], 0, total)[0]
  mesh.fan(previous, tip)
  tip_vertices[0] = tip
  # Wrist cap: inner ring sized to reach 778 vertices exactly, then a centre vertex.
  unused = len(mesh.points) - len({v for face in mesh.faces for v in face})  # the hole's interior
  inner_count = NUM_VERTICES - (len(mesh.points) - unused) - 1
  if not 6 <= inner_count <= PALM_COLUMNS:
    raise RuntimeError(f'wrist cap would need {inner_count} vertices')
  half_w, half_h, exponent, centre_w, centre_h = _palm_section(0.0, p)
  theta = 2 * np.pi * (np.arange(inner_count) + 0.5) / inner_count
  cw, sw = np.cos(theta), np.sin(theta)
  inner = np.stack(
      [
          np.full(inner_count, WRIST_CAP_U - 0.004),
          centre_w + 0.55 * half_w * np.sign(cw) * np.abs(cw) ** (2 / exponent),
          centre_h + 0.55 * half_h * np.sign(sw) * np.abs(sw) ** (2 / exponent),
      ],
      axis=1,
  )
  inner_ids = mesh.add(inner)
  centre_id = mesh.add(np.array([WRIST_CAP_U - 0.0055, centre_w, centre_h]))[0]
  # The cap faces the other way (towards -u): walk both loops backwards.
  outer_angles = palm_angles[0]
  mesh.zipper(
      palm_ids[0][::-1],
      (2 * np.pi - outer_angles)[::-1],
      inner_ids[::-1],
      (2 * np.pi - theta)[::-1],
  )
  mesh.fan(inner_ids[::-1], centre_id)
  # Drop the vertices inside the thumb hole and renumber.
  used = np.zeros(len(mesh.points), bool)
  used[np.array(mesh.faces).reshape(-1)] = True
  new_index = np.cumsum(used) - 1
  mesh = _Mesh(
      [q for q, keep in zip(mesh.points, used) if keep],
      [tuple(int(new_index[v]) for v in face) for face in mesh.faces],
      [d for d, keep in zip(mesh.digit_of, used) if keep],
      [s for s, keep in zip(mesh.s_along, used) if keep],
  )
  tip_vertices = {digit: int(new_index[v]) for digit, v in tip_vertices.items()}
  info = {'tips': tip_vertices}
  return mesh, digits, info


def _skeleton(digits: list[Digit]) -> np.ndarray:
  """(16, 3) joint positions in local coordinates, MANO order."""
  joints = np.zeros((16, 3))
  for digit in digits:
    position = digit.base.copy()
    for joint, direction, length in zip(digit.joints, digit.directions, digit.lengths):
      joints[joint] = position
      position = position + direction * length
  return joints


def _to_global(local: np.ndarray) -> np.ndarray:
  """(u distal, w radial, h dorsal) -> MANO-like (x, y, z) = (-u, h, w) + ORIGIN (a proper rotation)."""
  return np.stack([-local[..., 0], local[..., 2], local[..., 1]], axis=-1) + ORIGIN


def _direction_to_global(local: np.ndarray) -> np.ndarray:
  return np.stack([-local[..., 0], local[..., 2], local[..., 1]], axis=-1)


def _vertex_order(num: int, tips: dict[int, int]) -> np.ndarray:
  """Permutation new_index -> old_index that puts the tips at TARGET_TIP_IDS."""
  order = np.arange(num)
  for digit, target in enumerate(TARGET_TIP_IDS):
    current = int(np.nonzero(order == tips[digit])[0][0])
    order[[current, target]] = order[[target, current]]
  return order


# ---------------------------------------------------------------------------------------------
# Skinning weights, joint regressor, pose axes
# ---------------------------------------------------------------------------------------------


def _smoothstep(x: np.ndarray) -> np.ndarray:
  t = np.clip(0.5 + 0.5 * x, 0.0, 1.0)
  return t * t * (3 - 2 * t)


def _digit_weights(s: np.ndarray, digit: Digit, widths: tuple[float, float, float]) -> np.ndarray:
  """(n, 4) weights for (parent of joint 1, joint 1, joint 2, joint 3) along a digit."""
  knots = np.concatenate([[0.0], np.cumsum(digit.lengths)[:2]])
  steps = [_smoothstep((s - knot) / width) for knot, width in zip(knots, widths)]
  return np.stack([1 - steps[0], steps[0] - steps[1], steps[1] - steps[2], steps[2]], axis=1)


def _adjacency(faces: np.ndarray, num: int) -> list[np.ndarray]:
  neighbours = [set() for _ in range(num)]
  for a, b, c in faces:
    neighbours[a].update((b, c))
    neighbours[b].update((a, c))
    neighbours[c].update((a, b))
  return [np.array(sorted(n)) for n in neighbours]


def _skinning_weights(
    points: np.ndarray, mesh: _Mesh, digits: list[Digit], faces: np.ndarray
) -> np.ndarray:
  num = len(points)
  weights = np.zeros((num, 16))
  digit_of = np.array(mesh.digit_of)
  s_along = np.array(mesh.s_along)
  fingers = digits[1:]
  thumb = digits[0]
  widths_finger = (0.012, 0.006, 0.005)
  widths_thumb = (0.014, 0.007, 0.006)
  for index, digit in enumerate(digits):
    mask = digit_of == index
    if not mask.any():
      continue
    w = _digit_weights(s_along[mask], digit, widths_thumb if index == 0 else widths_finger)
    weights[np.ix_(mask, (0,) + digit.joints)] = w
  # Palm: blend towards the knuckle of the finger whose column the vertex is in, and the thumb CMC.
  palm = np.nonzero(digit_of == -1)[0]
  centres = np.array([d.base[1] for d in fingers])
  for v in palm:
    point = points[v]
    finger = fingers[int(np.argmin(np.abs(centres - point[1])))]
    s = float(np.dot(point - finger.base, finger.directions[0]))
    w_finger = _digit_weights(np.array([s]), finger, widths_finger)[0]
    row = np.zeros(16)
    row[[0, finger.joints[0]]] = w_finger[:2]
    # Thenar: distance to the thumb metacarpal.
    start, end = thumb.base, thumb.base + thumb.directions[0] * thumb.lengths[0]
    t = np.clip(np.dot(point - start, end - start) / np.dot(end - start, end - start), 0, 1)
    distance = np.linalg.norm(point - (start + t * (end - start)))
    thenar = (
        0.85 * np.clip(1.0 - distance / 0.024, 0.0, 1.0) ** 2 * _smoothstep(np.array(t * 4 - 1))
    )
    row *= 1 - thenar
    row[thumb.joints[0]] += thenar
    weights[v] = row
  neighbours = _adjacency(faces, num)
  for _ in range(8):
    averaged = np.stack([weights[n].mean(axis=0) for n in neighbours])
    weights = 0.5 * weights + 0.5 * averaged
  weights = np.clip(weights, 0.0, None)
  weights[weights < 1e-4] = 0.0
  return weights / weights.sum(axis=1, keepdims=True)


def _joint_regressor(points: np.ndarray, joints: np.ndarray) -> np.ndarray:
  """(16, V) rows: non-negative, summing to 1, vertices within 2 cm, weighted mean = the joint."""
  regressor = np.zeros((len(joints), len(points)))
  for j, joint in enumerate(joints):
    distance = np.linalg.norm(points - joint, axis=1)
    radius = 0.02
    candidates = np.nonzero(distance < radius)[0]
    while len(candidates) < 12:
      radius *= 1.25
      candidates = np.nonzero(distance < radius)[0]
    prior = np.exp(-((distance[candidates] / (0.5 * radius)) ** 2))
    prior /= prior.sum()
    centred = (points[candidates] - joint).T * 100.0  # centimetres, so terms are comparable
    reg = 0.05
    matrix = np.concatenate(
        [centred, 10.0 * np.ones((1, len(candidates))), reg * np.eye(len(candidates))]
    )
    target = np.concatenate([np.zeros(3), [10.0], reg * prior])
    solution, _ = nnls(matrix, target, maxiter=5000)
    solution /= solution.sum()
    regressor[j, candidates] = solution
  return regressor


def _pose_axes_and_limits(digits: list[Digit]) -> tuple[np.ndarray, np.ndarray]:
  """(15, 3, 3) (flex, abduction, twist) axes in global coordinates and (15, 3, 2) limits."""
  axes = np.zeros((15, 3, 3))
  limits = np.zeros((15, 3, 2))
  palmar, radial = np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0])  # local (u, w, h)
  finger_limits = {
      0: ((0.0, 1.55), (-0.30, 0.30), (-0.10, 0.10)),
      1: ((0.0, 1.80), (-0.05, 0.05), (-0.08, 0.08)),
      2: ((0.0, 1.30), (-0.05, 0.05), (-0.05, 0.05)),
  }
  thumb_limits = {
      0: ((-0.25, 0.90), (-0.20, 1.00), (-0.30, 0.60)),
      1: ((0.0, 1.00), (-0.15, 0.15), (-0.15, 0.15)),
      2: ((0.0, 1.30), (-0.05, 0.05), (-0.05, 0.05)),
  }
  for digit in digits:
    for k, joint in enumerate(digit.joints):
      d = digit.directions[k]
      if digit.name == 'thumb':
        curl = radial * -1.0 if k == 0 else _unit(-radial + palmar)  # across the palm
      else:
        curl = palmar
      curl = _unit(curl - np.dot(curl, d) * d)
      flex = np.cross(d, curl)  # rotating about flex moves d towards curl
      abduct = np.cross(d, flex)  # moves d towards flex (sideways / out of the curl plane)
      if digit.name == 'thumb' and k == 0 and np.dot(np.cross(abduct, d), palmar) < 0:
        abduct = -abduct  # CMC: positive abduction lifts the thumb to the palmar side
      # The right thumb pronates (pad turning towards the fingers) when turning about -d.
      twist = -d if digit.name == 'thumb' else d
      axes[joint - 1] = np.stack(
          [_direction_to_global(flex), _direction_to_global(abduct), _direction_to_global(twist)]
      )
      table = thumb_limits if digit.name == 'thumb' else finger_limits
      limits[joint - 1] = np.array(table[k])
  # little finger spreads a bit more
  return axes, limits


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------


def _default_parameters() -> dict[str, float]:
  p = {name: 1.0 for name, _ in SHAPE_PARAMETERS}
  p['digit_ratio'] = 0.0
  return p


def _vertices_for(p: dict[str, float], order: np.ndarray) -> np.ndarray:
  mesh, _, _ = _build_mesh(p)
  local = np.array(mesh.points) * p['scale']
  return _to_global(local)[order]


def generate() -> dict[str, np.ndarray]:
  """Builds every array of the procedural hand (deterministic)."""
  params = _default_parameters()
  mesh, digits, info = _build_mesh(params)
  num = len(mesh.points)
  if num != NUM_VERTICES:
    raise RuntimeError(f'procedural hand has {num} vertices, expected {NUM_VERTICES}')
  order = _vertex_order(num, info['tips'])
  inverse = np.argsort(order)
  faces_old = np.array(mesh.faces, np.int64)
  faces = inverse[faces_old]
  local = np.array(mesh.points)
  points_global = _to_global(local)
  joints_global = _to_global(_skeleton(digits))
  weights = _skinning_weights(local, mesh, digits, faces_old)[order]
  v_template = points_global[order]
  regressor = _joint_regressor(v_template, joints_global)

  shapedirs = np.zeros((NUM_VERTICES, 3, len(SHAPE_PARAMETERS)))
  for k, (name, std) in enumerate(SHAPE_PARAMETERS):
    plus, minus = dict(params), dict(params)
    plus[name] += 0.5 * std
    minus[name] -= 0.5 * std
    shapedirs[:, :, k] = _vertices_for(plus, order) - _vertices_for(minus, order)

  axes, limits = _pose_axes_and_limits(digits)
  kintree = np.array(
      [[4294967295, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14], np.arange(16)], np.int64
  )
  arrays = {
      'v_template': v_template.astype(np.float32),
      'shapedirs': shapedirs.astype(np.float32),
      'posedirs': np.zeros((NUM_VERTICES, 3, 135), np.float32),
      'J_regressor': regressor.astype(np.float32),
      'weights': weights.astype(np.float32),
      'kintree_table': kintree,
      'f': faces.astype(np.int32),
      'hands_components': np.eye(45, dtype=np.float32),
      'hands_mean': np.zeros(45, np.float32),
      'tip_ids': np.array(TARGET_TIP_IDS, np.int64),
      'pose_axes': axes.astype(np.float32),
      'pose_limits': limits.astype(np.float32),
      'joints_rest': joints_global.astype(np.float32),
  }
  arrays['hands_mean'], arrays['hands_components'] = _pose_statistics(arrays)
  return arrays


def skin_regions() -> dict[str, np.ndarray]:
  """Where the hand's skin differs, per vertex of the shipped hand (778,), from its own parts.

  The synthetic-hands renders colour these (`data/synthetic_scene.py`), so that a picture shows which
  side of the hand faces the camera, as the palm, nails and knuckles of a real hand do:

    dorsal   in [-1, 1]: the rest-pose normal along the back-of-hand direction of its part (+1 the back,
             -1 the palm side; the thumb's own nail direction for the thumb)
    nail     in [0, 1]: the back of each digit's last bone, from about a third of the way along it to
             just short of the tip
    knuckle  in [0, 1]: the back of the MCP, PIP and DIP joints of the four fingers
    crease   in [0, 1]: the palm side of the same finger joints, and two lines across the palm

  Computed from the generator (`_build_mesh`), in the vertex order of `generate()`'s arrays.
  """
  params = _default_parameters()
  mesh, digits, info = _build_mesh(params)
  order = _vertex_order(len(mesh.points), info['tips'])
  local = np.array(mesh.points)
  normals = render.vertex_normals(local, np.array(mesh.faces, np.int64))
  digit_of = np.array(mesh.digit_of)
  s_along = np.array(mesh.s_along)
  count = len(local)
  dorsal_dir = np.tile([0.0, 0.0, 1.0], (count, 1))  # local h: the back of the palm
  for v in np.nonzero(digit_of >= 0)[0]:
    dorsal_dir[v] = _digit_frame(digits[digit_of[v]], s_along[v])[3]
  dorsal = np.clip(np.sum(normals * dorsal_dir, axis=1), -1.0, 1.0)
  back = np.clip((dorsal - 0.2) / 0.4, 0.0, 1.0)
  palm_side = np.clip((-dorsal - 0.2) / 0.4, 0.0, 1.0)
  nail, knuckle, crease = np.zeros(count), np.zeros(count), np.zeros(count)
  for index, digit in enumerate(digits):
    mask = digit_of == index
    s = s_along[mask]
    l1, l2, l3 = digit.lengths
    total, tip_radius = l1 + l2 + l3, digit.radii_w[3]
    nail[mask] = ((s > l1 + l2 + 0.3 * l3) & (s < total - 0.15 * tip_radius)) * np.clip(
        (dorsal[mask] - 0.35) / 0.35, 0.0, 1.0
    )
    if digit.name == 'thumb':
      continue
    near_joint = np.maximum.reduce(
        [
            np.clip(1.0 - s / (0.45 * l1), 0.0, 1.0),  # the MCP (the base ring sits just past it)
            np.clip(1.0 - np.abs(s - l1) / (0.3 * l2), 0.0, 1.0),
            np.clip(1.0 - np.abs(s - l1 - l2) / (0.3 * l3), 0.0, 1.0),
        ]
    )
    knuckle[mask] = near_joint * back[mask]
    crease[mask] = near_joint * palm_side[mask]
  # Two lines across the palm (its rings at 56% and 84% of the way from the wrist to the knuckles).
  palm = np.nonzero(digit_of == -1)[0]
  knuckle_u = np.mean([digit.base[0] for digit in digits[1:]])
  level = (local[palm, 0] - WRIST_CAP_U) / (knuckle_u - WRIST_CAP_U)
  line = np.maximum(
      np.clip(1.0 - np.abs(level - 0.56) / 0.08, 0.0, 1.0),
      np.clip(1.0 - np.abs(level - 0.84) / 0.08, 0.0, 1.0),
  )
  crease[palm] = line * palm_side[palm]
  return {
      name: values[order]
      for name, values in (
          ('dorsal', dorsal),
          ('nail', nail),
          ('knuckle', knuckle),
          ('crease', crease),
      )
  }


# What the palm side turns towards (lighter, pinker) and the nails' colour, albedo in [0, 1].
PALM_TINT = np.array([1.0, 0.80, 0.78])
NAIL_COLOUR = np.array([0.97, 0.86, 0.84])


def skin_albedo(
    base: np.ndarray,
    regions: dict[str, np.ndarray],
    *,
    palm_lighten: float = 0.65,
    back_darken: float = 0.3,
    nail: float = 0.9,
    knuckle: float = 0.25,
    crease: float = 0.3,
) -> np.ndarray:
  """Per-vertex albedo (V, 3) in [0, 1] from a skin tone and `skin_regions()`.

  base: (3,) or (V, 3) skin albedo. The palm side moves `palm_lighten` of the way to `PALM_TINT` and the
  back darkens by `back_darken` (a real palm is lighter than the back at every skin tone, most of all
  at dark ones); knuckles and creases darken by their strengths; nails move `nail` of the way to
  `NAIL_COLOUR`.
  """
  base = np.broadcast_to(np.asarray(base, np.float64), (len(regions['dorsal']), 3))
  palm_weight = np.clip((0.15 - regions['dorsal']) / 0.5, 0.0, 1.0)[:, None]
  # The back tans towards yellow-brown: its blue and green darken more than its red.
  back = base * (1.0 - back_darken * np.array([0.8, 1.0, 1.25]))
  palm = base + palm_lighten * (PALM_TINT - base)
  albedo = (1.0 - palm_weight) * back + palm_weight * palm
  albedo = albedo * (1.0 - knuckle * regions['knuckle'][:, None])
  albedo = albedo * (1.0 - crease * regions['crease'][:, None] * np.array([1.0, 1.15, 1.15]))
  nail_weight = nail * regions['nail'][:, None]
  albedo = (1.0 - nail_weight) * albedo + nail_weight * NAIL_COLOUR
  return np.clip(albedo, 0.0, 1.0)


def _pose_statistics(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """A slightly curled mean pose and the PCA basis of sampled plausible poses."""
  model = mano.model_from_arrays(arrays, source='<procedural>')
  curl = np.zeros((15, 3))
  fractions = {0: 0.12, 1: 0.15, 2: 0.15}
  limits = arrays['pose_limits'].astype(np.float64)
  for joint in range(15):
    finger_joint = joint % 3
    curl[joint, 0] = limits[joint, 0, 0] + fractions[finger_joint] * (
        limits[joint, 0, 1] - limits[joint, 0, 0]
    )
  curl[12:15, 0] = np.array([0.10, 0.15, 0.15])
  curl[12, 1] = 0.15
  mean = np.einsum('jk,jkc->jc', curl, arrays['pose_axes'].astype(np.float64)).reshape(45)
  poses = mano.sample_random_pose(np.random.default_rng(0), model, 20000)[:, 3:].astype(np.float64)
  centred = poses - poses.mean(axis=0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  signs = np.sign(vt[np.arange(45), np.argmax(np.abs(vt), axis=1)])
  components = vt * signs[:, None]
  return mean.astype(np.float32), components.astype(np.float32)
