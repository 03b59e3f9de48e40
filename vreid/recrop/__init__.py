"""Weakly supervised re-crop (seed 003 §3.1 CityFlow-V2-CROP): heatmap boxes (``boxes``, pure) and
the pipeline stage that writes the cropped copy of the dataset (``stage``, Ray Data)."""
