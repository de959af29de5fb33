"""Training-step throughput of what a user would run instead of hbac, on the CPU: PyTorch + timm
(tf_mobilenetv3_large_100 / tf_efficientnetv2_b2, Adam) and Keras 3 on TensorFlow (KerasCV's
MobileNetV3-Large backbone, the original project's model, and keras.applications'
EfficientNetV2-B2, Adam), both with a 6-class head, KL-divergence loss, random weights and
random [batch, 3, 400, 300] inputs, as bench/src/bin/train_step.rs measures hbac.

    python bench/anchors_cpu.py --framework torch|keras --arch mobilenetv3-large|efficientnetv2-b2 \
        [--batch 8] [--steps 3] [--threads 2]

Prints one line ending in samples_per_s=<x>, after two untimed warm-up steps (as hbac's).
"""

import argparse
import os
import time


def torch_step(arch, batch, threads):
    import timm
    import torch

    torch.set_num_threads(threads)
    name = {"mobilenetv3-large": "tf_mobilenetv3_large_100",
            "efficientnetv2-b2": "tf_efficientnetv2_b2"}[arch]
    model = timm.create_model(name, pretrained=False, num_classes=6)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    x = torch.randn(batch, 3, 400, 300)
    y = torch.softmax(torch.rand(batch, 6), dim=1)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = kl(torch.log_softmax(model(x), dim=1), y)
        loss.backward()
        opt.step()

    params = sum(p.numel() for p in model.parameters())
    return f"torch {torch.__version__} timm {timm.__version__} params {params}", step


def keras_step(arch, batch, threads):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    inputs = keras.Input((400, 300, 3))
    if arch == "mobilenetv3-large":
        import keras_cv

        backbone = keras_cv.models.MobileNetV3Backbone(
            stackwise_expansion=[1, 4, 3, 3, 3, 3, 6, 2.5, 2.3, 2.3, 6, 6, 6, 6, 6],
            stackwise_filters=[16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160],
            stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5],
            stackwise_stride=[1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1],
            stackwise_se_ratio=[None, None, None, 0.25, 0.25, 0.25, None, None, None, None,
                                0.25, 0.25, 0.25, 0.25, 0.25],
            stackwise_activation=["relu"] * 6 + ["hard_swish"] * 9,
            include_rescaling=True,
            input_shape=(400, 300, 3),
        )
        lib = f"keras-cv {keras_cv.__version__}"
    else:
        backbone = keras.applications.EfficientNetV2B2(
            include_top=False, weights=None, input_shape=(400, 300, 3))
        lib = "keras.applications"
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(6, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=keras.losses.KLDivergence())
    x = tf.random.normal((batch, 400, 300, 3))
    y = tf.nn.softmax(tf.random.uniform((batch, 6)), axis=1)

    def step():
        model.train_on_batch(x, y)

    params = model.count_params()
    return f"keras {keras.__version__} tensorflow {tf.__version__} {lib} params {params}", step


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--framework", choices=["torch", "keras"], required=True)
    p.add_argument("--arch", choices=["mobilenetv3-large", "efficientnetv2-b2"], required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    make = torch_step if a.framework == "torch" else keras_step
    versions, step = make(a.arch, a.batch, a.threads)
    for _ in range(2):  # warm-up: graph tracing, allocation, as hbac's train_step
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    mean = sum(times) / len(times)
    print(f"anchor={a.framework} ({versions}) arch={a.arch} batch={a.batch} "
          f"step_seconds={[round(t, 3) for t in times]} samples_per_s={a.batch / mean:.2f}",
          flush=True)


if __name__ == "__main__":
    main()
