"""The embedded synthetic data set: procedurally drawn street scenes with and without roadwork.

It stands in for the NATIX photos (unavailable offline) in ``make demo``, the tests and CI. It is small and
crude next to 4032x3024 phone photos, but it has the properties the pipeline must cope with: two classes
that colour alone does not separate, slices (time of day, weather, camera), varied geometry and image sizes,
and planted near-duplicates that dedupe has to find.

Generative model
----------------
Every *scene* ``i`` is drawn from its own generator ``numpy.random.default_rng([seed, 0, i])``, so an image
depends only on ``(seed, i, label)``, never on drawing order or parallelism. A scene is:

1. **Slices**: ``time_of_day`` (day / dusk / night), ``weather`` (clear / rain / fog / snow) and ``camera``
   (dashcam / phone), drawn independently of the label so no slice is a shortcut.
2. **Camera**: image size (320–800 px wide; dashcam 16:9, phone 4:3, 16:9 or portrait 3:4), focal length,
   mounting height, roll, horizon height, vanishing point and lateral position. A pinhole model over a flat
   road projects a world point at lateral offset ``X`` m, height ``Y`` m and depth ``Z`` m to
   ``u = vx + f (X + c Z^2 - x_cam) / Z`` and ``v = horizon + f (h_cam - Y) / Z`` (``c``: road curvature),
   so objects shrink with distance and sit on the road plane.
3. **Layout** (urban / suburban / rural / highway): sky gradient coloured by time of day, a far silhouette
   (hills, tree line or skyline), ground, a road with 1–4 lanes, lane marks and kerbs, sidewalks, buildings
   with windows, trees, street lamps, guard rails, an occasional overpass and shadow bands.
4. **Traffic and street furniture**: cars, vans, buses, pedestrians, bins and street signs.
5. **Label**: a positive (``roadwork``) carries a work zone on one lane, placed where it shows in the
   frame and through fog, at 8–35 m or (25 %) 35–60 m, so sometimes small and far: any mix of traffic
   cones tapering across the closed lane, striped barriers, an orange work-zone diamond sign, workers in
   hi-vis vests, an excavator and patched or dug-up road surface; no traffic drives through or in front of
   it. A negative (``no_roadwork``) carries look-alikes somewhat more often: orange and yellow cars, yellow
   warning diamonds, orange-clad pedestrians and orange bins. Both classes share autumn trees, brick
   facades, dusk skies and sodium street lights, so colour features alone do not decide the label.
6. **Rendering**: objects are painted far to near with PIL.ImageDraw, every point rolled about the image
   centre by the camera roll, every colour brightened by head lights near the camera at night and tinted
   towards the fog colour by depth; then ambient light (dark and blue at night), glowing lamps / head
   lights / beacons / reflective bands, fog haze, rain streaks or snow flakes, a dashcam bonnet, motion or
   Gaussian blur and sensor noise are applied, and the image is saved as a baseline JPEG of quality
   :data:`JPEG_QUALITY` without EXIF, so files are byte-identical for the same inputs.

Near-duplicates
---------------
After the scenes, ``round(n * near_duplicate_fraction)`` extra files are *copies* of scenes (generator
``default_rng([seed, 1, j])`` for copy ``j``): re-encoded at another JPEG quality, resized by 0.6–0.9x, or
cropped by 2–3 % per side (pHash keeps only ~85 % of 2–6 % crops within 10 bits). Each copy sits in its
source's class folder, shares its metadata and is listed in ``near_duplicates.csv``. Sources are drawn
without replacement while there are enough scenes. Labels, sources, kinds and file numbers come from
``default_rng([seed, 2])``; file numbers are a random permutation of ``0..n-1``, so a name says nothing.

Modules
-------
:mod:`.painter` (camera model and painter), :mod:`.objects` (things standing on the road),
:mod:`.background` (sky, road, buildings, trees), :mod:`.workzone` (a positive's work zone), :mod:`.street`
(traffic, furniture and look-alikes), :mod:`.effects` (light, weather, optics, sensor), :mod:`.scene`
(:func:`draw_scene`) and :mod:`.dataset` (:func:`generate_dataset`, the files and the copies).
"""

from roadwork.data.synth.dataset import (
    CLASS_FOLDERS,
    JPEG_QUALITY,
    METADATA_COLUMNS,
    METADATA_FILE,
    MIN_IMAGES,
    NEAR_DUPLICATE_COLUMNS,
    NEAR_DUPLICATE_KINDS,
    NEAR_DUPLICATES_FILE,
    SynthSummary,
    encode_jpeg,
    generate_dataset,
    make_near_duplicate,
)
from roadwork.data.synth.scene import CAMERAS, TIMES_OF_DAY, WEATHERS, SceneInfo, draw_scene

__all__ = [
    "CAMERAS",
    "CLASS_FOLDERS",
    "JPEG_QUALITY",
    "METADATA_COLUMNS",
    "METADATA_FILE",
    "MIN_IMAGES",
    "NEAR_DUPLICATES_FILE",
    "NEAR_DUPLICATE_COLUMNS",
    "NEAR_DUPLICATE_KINDS",
    "TIMES_OF_DAY",
    "WEATHERS",
    "SceneInfo",
    "SynthSummary",
    "draw_scene",
    "encode_jpeg",
    "generate_dataset",
    "make_near_duplicate",
]
