"""Pictures of weights: filter grids and histograms as RGB images, PNG files and
terminal text. Pure numpy, Pillow for painting and PNG; never Keras.

It draws what :mod:`conv_surgeon.ops.show` read, and prints nothing: the terminal
text goes to the caller (:mod:`conv_surgeon.render` prints it).
"""
