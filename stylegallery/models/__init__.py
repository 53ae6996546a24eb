"""Loading the models StyleGallery uses: which model a name means, the diffusion backbone and its family, DINOv2 and
Depth Anything with their preprocessing, step-distilled LoRAs and the fast presets, devices and dtypes."""
