"""The `cnn` preset in Keras, written as the Keras "simple MNIST convnet" example is.

RandomRotation(0.025) and RandomTranslation(0.08, 0.08), fill "constant" -> Conv2D 32 3x3
ReLU -> MaxPooling2D 2 -> Conv2D 64 3x3 ReLU -> MaxPooling2D 2 -> Flatten -> Dropout 0.4 ->
Dense 10 softmax; Adam (lr 2e-3 with CosineDecay over the run), batch 64, inputs in [0, 1].
Usage: KERAS_BACKEND=jax python cnn_keras.py DATA_DIR [epochs]
"""
import os, sys, time
import numpy as np
import keras
from keras import layers

from mnist_idx import load


d = sys.argv[1]
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
keras.utils.set_random_seed(0)
x_train, y_train, x_test, y_test = load(d)
x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255
x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255

model = keras.Sequential([
    keras.Input(shape=(28, 28, 1)),
    layers.RandomRotation(0.025, fill_mode="constant"),
    layers.RandomTranslation(0.08, 0.08, fill_mode="constant"),
    layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
    layers.MaxPooling2D(pool_size=(2, 2)),
    layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
    layers.MaxPooling2D(pool_size=(2, 2)),
    layers.Flatten(),
    layers.Dropout(0.4),
    layers.Dense(10, activation="softmax"),
])
steps = epochs * -(-len(x_train) // 64)
adam = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(0.002, steps))
model.compile(loss="sparse_categorical_crossentropy", optimizer=adam, metrics=["accuracy"])
t = time.perf_counter()
model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=2)
train_s = time.perf_counter() - t
loss, acc = model.evaluate(x_test, y_test, verbose=0)
print(f"backend={os.environ.get('KERAS_BACKEND', 'tensorflow')} keras={keras.__version__} epochs={epochs} "
      f"train_s={train_s:.2f} s_per_epoch={train_s/epochs:.2f} test_loss={loss:.4f} test_acc={acc:.4f}")
