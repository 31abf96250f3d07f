package main

// The provisioner (what external-provisioner does for a real CSI driver, reduced to this driver's needs):
// sig-storage-lib-external-provisioner watches PVCs of StorageClasses whose provisioner is the driver's
// name and calls Provision/Delete; these call the driver's CreateVolume/DeleteVolume over its socket. A PVC
// whose dataSource is a VolumeSnapshot is resolved to the snapshot handle the csi-snapshotter recorded in
// the bound VolumeSnapshotContent, and the new volume is created from that snapshot.

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

const snapshotGroup = "snapshot.storage.k8s.io"

var (
	snapshotsGVR = schema.GroupVersionResource{Group: snapshotGroup, Version: "v1", Resource: "volumesnapshots"}
	contentsGVR  = schema.GroupVersionResource{Group: snapshotGroup, Version: "v1", Resource: "volumesnapshotcontents"}
)

type provisioner struct {
	name    string
	nodeID  string
	csi     csi.ControllerClient
	dynamic dynamic.Interface
	secrets kubernetes.Interface // the class's provisioner secret: where a cloud snapshot is restored from
}

func (p *provisioner) snapshotHandle(ctx context.Context, namespace, name string) (string, error) {
	vs, err := p.dynamic.Resource(snapshotsGVR).Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("VolumeSnapshot %s/%s: %w", namespace, name, err)
	}
	ready, _, _ := unstructured.NestedBool(vs.Object, "status", "readyToUse")
	content, _, _ := unstructured.NestedString(vs.Object, "status", "boundVolumeSnapshotContentName")
	if !ready || content == "" {
		return "", fmt.Errorf("VolumeSnapshot %s/%s is not ready to use yet", namespace, name)
	}
	vsc, err := p.dynamic.Resource(contentsGVR).Get(ctx, content, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("VolumeSnapshotContent %s: %w", content, err)
	}
	if driver, _, _ := unstructured.NestedString(vsc.Object, "spec", "driver"); driver != p.name {
		return "", fmt.Errorf("VolumeSnapshotContent %s belongs to driver %q, not %q", content, driver, p.name)
	}
	handle, _, _ := unstructured.NestedString(vsc.Object, "status", "snapshotHandle")
	if handle == "" {
		return "", fmt.Errorf("VolumeSnapshotContent %s has no snapshot handle yet", content)
	}
	return handle, nil
}

func (p *provisioner) Provision(ctx context.Context, opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	claim := opts.PVC
	if claim.Spec.VolumeMode != nil && *claim.Spec.VolumeMode == v1.PersistentVolumeBlock {
		return nil, controller.ProvisioningFinished, fmt.Errorf("block volumes are not supported")
	}
	req := &csi.CreateVolumeRequest{
		Name: opts.PVName,
		VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}},
		Parameters: driverParameters(opts.StorageClass.Parameters),
	}
	stageSecret, err := nodeStageSecret(opts.StorageClass.Parameters, claim, opts.PVName)
	if err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	capacity := claim.Spec.Resources.Requests[v1.ResourceStorage]
	req.CapacityRange = &csi.CapacityRange{RequiredBytes: capacity.Value()}
	source := claim.Spec.DataSourceRef
	if source == nil && claim.Spec.DataSource != nil {
		source = &v1.TypedObjectReference{APIGroup: claim.Spec.DataSource.APIGroup,
			Kind: claim.Spec.DataSource.Kind, Name: claim.Spec.DataSource.Name}
	}
	if source != nil {
		if source.Kind != "VolumeSnapshot" || source.APIGroup == nil || *source.APIGroup != snapshotGroup {
			return nil, controller.ProvisioningFinished, fmt.Errorf("unsupported dataSource %s %s", source.Kind, source.Name)
		}
		namespace := claim.Namespace
		if source.Namespace != nil && *source.Namespace != "" {
			namespace = *source.Namespace
		}
		handle, err := p.snapshotHandle(ctx, namespace, source.Name)
		if err != nil {
			return nil, controller.ProvisioningNoChange, err // retried: the snapshot may become ready
		}
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: handle},
		}}
		if req.Secrets, err = p.provisionerSecret(ctx, opts.StorageClass.Parameters, claim, opts.PVName); err != nil {
			return nil, controller.ProvisioningNoChange, err // retried: the Secret may be created later
		}
	}
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	resp, err := p.csi.CreateVolume(callCtx, req)
	if err != nil {
		return nil, controller.ProvisioningInBackground, fmt.Errorf("CreateVolume %s: %w", opts.PVName, err)
	}
	reclaim := v1.PersistentVolumeReclaimDelete
	if opts.StorageClass.ReclaimPolicy != nil {
		reclaim = *opts.StorageClass.ReclaimPolicy
	}
	filesystem := v1.PersistentVolumeFilesystem
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: opts.PVName},
		Spec: v1.PersistentVolumeSpec{
			AccessModes:                   claim.Spec.AccessModes,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: capacity},
			PersistentVolumeReclaimPolicy: reclaim,
			MountOptions:                  opts.StorageClass.MountOptions,
			VolumeMode:                    &filesystem,
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{
				Driver:             p.name,
				VolumeHandle:       resp.GetVolume().GetVolumeId(),
				VolumeAttributes:   resp.GetVolume().GetVolumeContext(),
				NodeStageSecretRef: stageSecret,
				FSType:             "ext4",
			}},
			// the data lives on this node's disk: pods using it must land here
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
				MatchExpressions: []v1.NodeSelectorRequirement{{
					Key: topologyKey, Operator: v1.NodeSelectorOpIn, Values: []string{p.nodeID},
				}},
			}}}},
		},
	}
	logf("provisioned %s for %s/%s (source %v)", opts.PVName, claim.Namespace, claim.Name, source != nil)
	return pv, controller.ProvisioningFinished, nil
}

const (
	reservedPrefix       = "csi.storage.k8s.io/"
	stageSecretName      = reservedPrefix + "node-stage-secret-name"
	stageSecretNamespace = reservedPrefix + "node-stage-secret-namespace"
	provSecretName       = reservedPrefix + "provisioner-secret-name"
	provSecretNamespace  = reservedPrefix + "provisioner-secret-namespace"
)

// provisionerSecret reads the class's provisioner Secret, as external-provisioner does, for a restore from a
// cloud snapshot (the S3 target and credentials); nil when the class names none.
func (p *provisioner) provisionerSecret(ctx context.Context, params map[string]string, claim *v1.PersistentVolumeClaim,
	pvName string) (map[string]string, error) {
	name, namespace := params[provSecretName], params[provSecretNamespace]
	if name == "" || namespace == "" {
		return nil, nil
	}
	expand := strings.NewReplacer("${pvc.name}", claim.Name, "${pvc.namespace}", claim.Namespace, "${pv.name}", pvName)
	secret, err := p.secrets.CoreV1().Secrets(expand.Replace(namespace)).Get(ctx, expand.Replace(name), metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("provisioner secret %s/%s: %w", expand.Replace(namespace), expand.Replace(name), err)
	}
	out := map[string]string{}
	for key, value := range secret.Data {
		out[key] = string(value)
	}
	return out, nil
}

// driverParameters drops the CO's reserved csi.storage.k8s.io/ keys, as external-provisioner does.
func driverParameters(params map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range params {
		if !strings.HasPrefix(k, reservedPrefix) {
			out[k] = v
		}
	}
	return out
}

// nodeStageSecret resolves the class's node-stage Secret (templates ${pvc.name}, ${pvc.namespace}, ${pv.name});
// an encrypted class must name one: without it no node could ever unlock the volume.
func nodeStageSecret(params map[string]string, claim *v1.PersistentVolumeClaim, pvName string) (*v1.SecretReference, error) {
	name, namespace := params[stageSecretName], params[stageSecretNamespace]
	if name == "" || namespace == "" {
		if encrypted, _ := strconv.ParseBool(params[paramEncrypted]); encrypted {
			return nil, fmt.Errorf("the StorageClass sets %s=true but not %s and %s: no node could unlock the volume",
				paramEncrypted, stageSecretName, stageSecretNamespace)
		}
		return nil, nil
	}
	expand := strings.NewReplacer("${pvc.name}", claim.Name, "${pvc.namespace}", claim.Namespace, "${pv.name}", pvName)
	return &v1.SecretReference{Name: expand.Replace(name), Namespace: expand.Replace(namespace)}, nil
}

func (p *provisioner) Delete(ctx context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != p.name {
		return &controller.IgnoredError{Reason: "not a volume of this driver"}
	}
	callCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	_, err := p.csi.DeleteVolume(callCtx, &csi.DeleteVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle})
	return err
}

func runProvisioner(name, endpoint, nodeID, kubeconfig string) error {
	if endpoint == "" || nodeID == "" || kubeconfig == "" {
		return fmt.Errorf("--endpoint, --node-id and --kubeconfig are required")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	clientset, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	p := &provisioner{name: name, nodeID: nodeID, csi: csi.NewControllerClient(conn), dynamic: dyn, secrets: clientset}
	pc := controller.NewProvisionController(ctx, clientset, name, p,
		controller.LeaderElection(false), // one node, one provisioner
		controller.FailedProvisionThreshold(0),
		controller.AddFinalizer(true),
	)
	go (&resizer{name: p.name, csi: p.csi, client: clientset}).run(ctx)
	host, _ := os.Hostname()
	logf("provisioner for %s %s running on %s (CSI %s)", name, version, host, endpoint)
	pc.Run(ctx)
	return nil
}
