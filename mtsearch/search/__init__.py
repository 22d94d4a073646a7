"""Many trials: the Ray Tune driver with Optuna and ASHA, the study folder, packing trials on GPUs,
and the confirm race. The only layer that imports Ray; the space file it runs is `mtsearch.space`.
"""
