"""Pictures of weights: filter grids and histograms as RGB images, PNG files and
terminal text. Filter grids in pure Python (numpy only for their statistics), histograms
with numpy, Pillow for painting; never Keras.

It draws what :mod:`conv_surgeon.instruments.show` read, and prints nothing: the terminal
text goes to the caller (:mod:`conv_surgeon.render` prints it).
"""
