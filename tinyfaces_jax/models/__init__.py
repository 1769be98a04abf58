"""Networks shared by several detector families: layers (Conv2D with CPU fast paths, ConvBN),
backbones (MobileNetV1-0.25, ResNet-50/101/152, VGG16), necks (FPN, SSH context module). A
family's own network is in detectors/<family>/model.py."""
