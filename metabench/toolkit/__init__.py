"""The plugin toolkit: building blocks a plugin may import (episode sampling, backbones, the functional
inner loop, augmentations, k-means, embeddings, the data cache). Imports only the plugin API above it."""
