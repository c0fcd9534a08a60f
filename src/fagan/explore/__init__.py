"""``fagan explore``: a local page showing a trained FAGAN's images and where it attends.

* :mod:`fagan.explore.explorer`: the model side (images, scores, attention maps as
  JSON-ready values), usable without any server;
* :mod:`fagan.explore.server`: the standard-library HTTP server and its routes;
* :mod:`fagan.explore.export`: one self-contained HTML file for chosen seeds;
* :mod:`fagan.explore.params`: validation of every request parameter;
* ``assets/``: the page (HTML, script, style), shipped with the package; nothing is
  fetched from anywhere else.
"""

from fagan.explore.explorer import Explorer
from fagan.explore.export import export_page, render_export
from fagan.explore.params import ImageRequest, RequestError
from fagan.explore.server import ExploreServer, make_server

__all__ = [
    "ExploreServer",
    "Explorer",
    "ImageRequest",
    "RequestError",
    "export_page",
    "make_server",
    "render_export",
]
