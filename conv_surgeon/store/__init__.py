"""The store: files and bytes of every kind of Keras save (zip members, HDF5 datasets,
weight shards, provenance records), read and written in place. No Keras, no layers."""
