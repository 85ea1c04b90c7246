"""The R50-FPN Mask R-CNN shared by make_r50_weights.py and torchvision_detect.py."""
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d


def build():
    """torchvision's maskrcnn_resnet50_fpn layout, 91 classes, FrozenBatchNorm2d with eps 0."""
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    model = MaskRCNN(backbone, 91)
    for m in frozen_batch_norms(model):
        m.eps = 0.0
    return model


def frozen_batch_norms(model):
    return [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
