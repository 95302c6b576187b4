"""PSA / AffinityNet (Ahn & Kwak, CVPR 2018) as a library of pure functions.

The Snakemake workflow calls these through one console script (`psa`); see
docs/design.md for the method and README.md for the pipeline.
"""

__version__ = "0.1.0"
