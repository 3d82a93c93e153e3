
import json, sys
import numpy as np
from repflow_tf import training
from repflow_tf.config import load_config

config = load_config(sys.argv[1], sys.argv[4:])
result = training.train(config, sys.argv[2])
np.savez(sys.argv[3], *[np.asarray(w) for w in result.model.get_weights()])
with open(sys.argv[3] + ".json", "w") as file:
    json.dump(result.summary, file)
