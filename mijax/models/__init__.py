"""Model definitions; each factory returns a `mijax.split.SplitModel` cut at a named layer."""

from mijax.models.he2019 import cifar10cnn, digits_cnn, lenet

__all__ = ["cifar10cnn", "digits_cnn", "lenet"]

from mijax.models.resnet import resnet20_cem  # noqa: E402
from mijax.models.vgg import vgg11_bn_sgm  # noqa: E402

__all__ += ["resnet20_cem", "vgg11_bn_sgm"]

from mijax.models.critics import dgwgan32  # noqa: E402
from mijax.models.resnet_decoder import res_norm_decoder  # noqa: E402

__all__ += ["dgwgan32", "res_norm_decoder"]

from mijax.models.decoders import decoder_for, he2019_decoder  # noqa: E402

__all__ += ["decoder_for", "he2019_decoder"]

from mijax.models.inversion_gan import kedmi_discriminator, mlp_critic, mlp_generator  # noqa: E402

__all__ += ["kedmi_discriminator", "mlp_critic", "mlp_generator"]

from mijax.models.funnel import classifier_4, pv4_classifier_4  # noqa: E402

__all__ += ["classifier_4", "pv4_classifier_4"]

from mijax.models.funnel_variants import rn18_pv4, vgg16_bn_pv4  # noqa: E402

__all__ += ["rn18_pv4", "vgg16_bn_pv4"]

from mijax.models.siftfunnel_decoders import siftfunnel_cut, siftfunnel_decoder  # noqa: E402

__all__ += ["siftfunnel_cut", "siftfunnel_decoder"]
