"""The devstack's single-node Kubernetes: its binaries, PKI, node, pod network, CSI driver, images and deploy/."""
