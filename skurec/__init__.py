"""skurec: recognise retail products (SKUs) from camera images with a hierarchical classifier on frozen embeddings.

The framework-free core (it never imports Dagster): ``skurec.layout`` (the work directory), catalogue import and
audit, ``skurec.encoders`` (frozen encoders by name), the embedding pipeline and cache, ``skurec.models`` (one method
per file), ``skurec.evaluation``, ``skurec.deployment`` (cards, bundles, gate, candidates) and ``skurec.serving``
(the Recognizer used in the cart). Import the submodule you need; importing ``skurec`` itself loads nothing heavy.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("skurec")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
