"""Interactive widgets of the course, built with ipywidgets and drawn with matplotlib and Pillow.

- :func:`kl_explorer` (notebook 01): sliders for two 1-D distributions P and Q, with both
  KL divergences and both densities redrawn as a slider moves (:mod:`.kl_widget`);
- :func:`latent_explorer` (notebook 07): sliders on two latent coordinates of a trained VAE,
  the decoded digit, maps of the latent space, a digit picker and prior samples
  (:mod:`.latent_widget`);
- :func:`interpolation_explorer` (notebook 07): a straight line between two digits in latent
  space beside the blend of their pixels (:mod:`.interpolation`).

Each builder checks its arguments and returns one ipywidgets container (a ``VBox`` subclass)
that holds, as attributes, the controls and the last computed values, so that the widgets run
and are tested without a browser. The pictures come from :mod:`.drawing`, the argument checks
and model calls the explorers share from :mod:`.common`.
"""

from .drawing import ELLIPSE_RGB, MARKER_RGB, png_to_array
from .interpolation import InterpolationExplorer, interpolation_explorer
from .kl_widget import KLExplorer, kl_explorer
from .latent_widget import BASE_OPTIONS, LatentExplorer, latent_explorer

__all__ = [
    "KLExplorer",
    "kl_explorer",
    "LatentExplorer",
    "latent_explorer",
    "InterpolationExplorer",
    "interpolation_explorer",
    "BASE_OPTIONS",
    "ELLIPSE_RGB",
    "MARKER_RGB",
    "png_to_array",
]
