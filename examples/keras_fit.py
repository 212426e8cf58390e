"""A resnexus model in Keras 3: build, fit on arrays, convert to PyTorch (needs resnexus[keras]).

python examples/keras_fit.py
"""

import keras
import numpy as np

from resnexus import keras as rk


def main() -> None:
    model = rk.create_model("resnet18", num_classes=2, input_shape=(32, 32, 3))
    model.compile("adamw", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    images = rng.random((16, 32, 32, 3), dtype=np.float32)  # NHWC, normalised as the model expects
    labels = rng.integers(0, 2, 16)
    model.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    torch_model = rk.to_torch(model)
    print(f"Keras model {model.name}: {model.count_params():,} parameters; PyTorch copy: {type(torch_model).__name__}")


if __name__ == "__main__":
    main()
