"""The demo catalogue: rendered packaging families with near-identical SKUs (``skurec demo``), and labelled batches
for the labelling loop. Not used by the pipeline itself."""

from skurec.demo.photo import image_rng, render_sku_jpeg
from skurec.demo.render import make_demo_catalogue, make_labelled_batch
from skurec.demo.skus import demo_skus

__all__ = ["demo_skus", "image_rng", "make_demo_catalogue", "make_labelled_batch", "render_sku_jpeg"]
