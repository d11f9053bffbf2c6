"""Graph surgery never imports Keras or TensorFlow: checked in a fresh interpreter that runs
every step of fold-bn's and prune's surgery on committed configs and stores.

(The other test_surgery_* files cannot check this in their own process: another test
of the session may have imported Keras before them.)
"""

from __future__ import annotations

import subprocess
import sys

from configs import CONFIGS

SCRIPT = """
import json, sys, zipfile, io, tempfile
from functools import partial
from pathlib import Path
import h5py

from conv_surgeon.model.graph import container_keys, keras_order, model_graphs
from conv_surgeon.model.structure import read_structure
from conv_surgeon.store.model_file import ModelFile
from conv_surgeon.surgery.channels import find_groups
from conv_surgeon.surgery.cuts import Cut, pruned_config, sliced, tensor_cuts, variable_cuts
from conv_surgeon.surgery.folding import find_pairs, folded_config, store_moves
from conv_surgeon.surgery.optimizer import read_optimizer_shapes, slot_changes, structure_variables, trainable_variables
from conv_surgeon.surgery.rewrite import StoreRewrite, rewrite_weights
from conv_surgeon.surgery.stored_graph import check_store_places, read_config

configs = Path(sys.argv[1])
done = []
for name in ("junctions", "fold_cases", "mixed"):
    config = json.loads((configs / f"{name}.json").read_text())
    for graph in model_graphs(config):
        container_keys(graph, keras_order(graph))
    pairs = list(find_pairs(config).pairs)
    folded = folded_config(config, pairs, keep_layers=False)
    store_moves(config, folded, {p.bn_path for p in pairs})
    cuts = [Cut(g, (0,)) for g in find_groups(config) if g.prunable][:1]  # fold_cases has none
    pruned_config(config, cuts), variable_cuts(cuts), tensor_cuts(cuts)
    done.append(name)

source = ModelFile.from_path(configs / "mixed.keras")
config, _ = read_config(source, "prune")
structure = read_structure(source)
by_path = {layer.path: layer for layer in structure.layers}
check_store_places(config, by_path, source.label, "prune")
trainable_variables(config, structure_variables(by_path))
[group] = [g for g in find_groups(config) if g.members == ("c1", "c2")]
axes = variable_cuts([Cut(group, (1,))])
slot_changes(structure, config, pruned_config(config, [Cut(group, (1,))]), by_path, {},
             {key: partial(sliced, axes=a) for key, a in axes.items()}, read_optimizer_shapes(source))
with tempfile.TemporaryDirectory() as folder:
    rewrite_weights(source, StoreRewrite(renames={"layers/dense": "layers/dense_9"}), Path(folder) / "w.h5")
done.append("mixed.keras")

bad = sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "tensorflow", "tf_keras", "keras_hub"))
print(" ".join(done))
assert not bad, bad
"""


def test_surgery_runs_without_importing_keras_or_tensorflow():
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(CONFIGS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["junctions", "fold_cases", "mixed", "mixed.keras"]
