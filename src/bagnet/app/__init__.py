"""The demo report and the web explorer built on :mod:`bagnet.explain`.

* :class:`Explorer` / :class:`ExploredImage`: one image's predictions and evidence maps,
  computed once, looked at class by class.
* :func:`make_server`: the ``bagnet serve`` web page (standard library HTTP server).
* :func:`build_report` / :func:`write_report`: the ``bagnet demo`` HTML report.
* :func:`sample_image`: the sample photos that ship with scikit-image.
"""

from .explorer import ExploredImage, Explorer
from .samples import SAMPLE_NAMES, sample_image
from .server import ExplorerServer, make_server

__all__ = ["SAMPLE_NAMES", "ExploredImage", "Explorer", "ExplorerServer", "make_server", "sample_image"]
