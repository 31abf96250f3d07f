// eventpipe-csi: a small host-path CSI driver and its provisioner, for the devstack's single-node cluster.
//
// No image registry is reachable and csi-driver-host-path, external-provisioner and node-driver-registrar are
// not served by the Go module proxy, so the devstack carries its own:
//
//	eventpipe-csi driver       CSI Identity/Controller/Node on a unix socket, plus the kubelet's plugin
//	                           registration service (what node-driver-registrar would do)
//	eventpipe-csi provisioner  binds PVCs of the driver's StorageClass to CSI PVs by calling CreateVolume,
//	                           with a VolumeSnapshot dataSource resolved to its snapshot handle
//
// Snapshots are made by external-snapshotter's snapshot-controller and csi-snapshotter sidecar, which call
// CreateSnapshot/DeleteSnapshot here. Data is really copied: a snapshot is a sparse copy of the volume's image,
// kept on the node or, with the VolumeSnapshotClass parameter cloud=s3, shipped to S3 in chunks (cloud.go).
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
)

const topologyKey = "topology.hostpath.csi.eventpipe.io/node"

var version = "dev" // set with -ldflags "-X main.version=..."

func logf(format string, args ...any) { log.Printf(format, args...) }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: eventpipe-csi driver|provisioner|version [flags]")
		os.Exit(2)
	}
	mode, args := os.Args[1], os.Args[2:]
	fl := flag.NewFlagSet(mode, flag.ExitOnError)
	name := fl.String("driver-name", "hostpath.csi.eventpipe.io", "CSI driver name")
	endpoint := fl.String("endpoint", "", "unix socket path of the CSI services")
	nodeID := fl.String("node-id", "", "node name (the kubelet's --hostname-override)")
	var err error
	switch mode {
	case "driver":
		root := fl.String("root", "/var/lib/eventpipe-csi", "directory holding volumes and snapshots")
		registry := fl.String("registration-dir", "", "the kubelet's plugins_registry directory")
		_ = fl.Parse(args)
		err = runDriver(*name, *endpoint, *nodeID, *root, *registry)
	case "provisioner":
		kubeconfig := fl.String("kubeconfig", "", "kubeconfig of the provisioner's identity")
		_ = fl.Parse(args)
		err = runProvisioner(*name, *endpoint, *nodeID, *kubeconfig)
	case "version":
		fmt.Println(version)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		log.Fatalf("eventpipe-csi %s: %v", mode, err)
	}
}
