package main

// The resizer (what external-resizer does, which the Go module proxy does not serve), in the provisioner's
// process: a claim of this driver whose request exceeds its PersistentVolume's capacity gets
// ControllerExpandVolume (the image grows), the PV's capacity is raised, and the claim is marked
// NodeResizePending + FileSystemResizePending. The kubelet then calls NodeExpandVolume: online where the host
// allows it, else at the next mount, i.e. after the pod restarts once (the condition Strimzi and ECK act on).
// A refused request (shrink, no space) leaves a VolumeResizeFailed event on the claim.

import (
	"context"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const resizeInterval = 2 * time.Second

type resizer struct {
	name   string
	csi    csi.ControllerClient
	client kubernetes.Interface
}

func (r *resizer) run(ctx context.Context) {
	logf("resizer for %s watching claims every %s", r.name, resizeInterval)
	for {
		if err := r.pass(ctx); err != nil && ctx.Err() == nil {
			logf("resizer: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(resizeInterval):
		}
	}
}

func (r *resizer) pass(ctx context.Context) error {
	pvs, err := r.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	ours := map[string]*v1.PersistentVolume{}
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == r.name && pv.Spec.ClaimRef != nil {
			ours[pv.Spec.ClaimRef.Namespace+"/"+pv.Spec.ClaimRef.Name] = pv
		}
	}
	if len(ours) == 0 {
		return nil
	}
	claims, err := r.client.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range claims.Items {
		claim := &claims.Items[i]
		pv := ours[claim.Namespace+"/"+claim.Name]
		if pv == nil || claim.Status.Phase != v1.ClaimBound || claim.Spec.VolumeName != pv.Name {
			continue
		}
		if err := r.reconcile(ctx, claim, pv); err != nil {
			logf("resizer: %s/%s: %v", claim.Namespace, claim.Name, err)
		}
	}
	return nil
}

func (r *resizer) reconcile(ctx context.Context, claim *v1.PersistentVolumeClaim, pv *v1.PersistentVolume) error {
	requested := claim.Spec.Resources.Requests[v1.ResourceStorage]
	current := pv.Spec.Capacity[v1.ResourceStorage]
	state := claim.Status.AllocatedResourceStatuses[v1.ResourceStorage]
	if requested.Cmp(current) <= 0 {
		if state == v1.PersistentVolumeClaimControllerResizeInProgress { // the PV grew before a crash
			return r.markNodePending(ctx, claim, current.Value())
		}
		return nil
	}
	if state == v1.PersistentVolumeClaimControllerResizeInfeasible {
		if allocated := claim.Status.AllocatedResources[v1.ResourceStorage]; allocated.Cmp(requested) == 0 {
			return nil // refused already for this size; a new request size is tried again
		}
	}
	claim = claim.DeepCopy()
	setResizeStatus(claim, requested.Value(), v1.PersistentVolumeClaimControllerResizeInProgress)
	setCondition(claim, v1.PersistentVolumeClaimResizing, "", "")
	updated, err := r.client.CoreV1().PersistentVolumeClaims(claim.Namespace).UpdateStatus(ctx, claim, metav1.UpdateOptions{})
	if err != nil {
		return err
	}
	callCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	resp, err := r.csi.ControllerExpandVolume(callCtx, &csi.ControllerExpandVolumeRequest{
		VolumeId:      pv.Spec.CSI.VolumeHandle,
		CapacityRange: &csi.CapacityRange{RequiredBytes: requested.Value()},
	})
	if err != nil {
		r.event(ctx, updated, v1.EventTypeWarning, "VolumeResizeFailed", fmt.Sprintf("resize volume %s: %v", pv.Name, err))
		if code := status.Code(err); code == codes.OutOfRange || code == codes.InvalidArgument || code == codes.ResourceExhausted {
			updated = updated.DeepCopy()
			setResizeStatus(updated, requested.Value(), v1.PersistentVolumeClaimControllerResizeInfeasible)
			setCondition(updated, v1.PersistentVolumeClaimControllerResizeError, "VolumeResizeFailed", err.Error())
			_, _ = r.client.CoreV1().PersistentVolumeClaims(claim.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
		}
		return err
	}
	pv = pv.DeepCopy()
	pv.Spec.Capacity[v1.ResourceStorage] = *newQuantity(resp.GetCapacityBytes())
	if _, err := r.client.CoreV1().PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{}); err != nil {
		return err
	}
	logf("resizer: %s/%s: volume %s expanded to %d bytes", claim.Namespace, claim.Name, pv.Name, resp.GetCapacityBytes())
	if !resp.GetNodeExpansionRequired() {
		updated = updated.DeepCopy()
		updated.Status.Capacity = v1.ResourceList{v1.ResourceStorage: *newQuantity(resp.GetCapacityBytes())}
		delete(updated.Status.AllocatedResourceStatuses, v1.ResourceStorage)
		setCondition(updated, "", "", "")
		_, err := r.client.CoreV1().PersistentVolumeClaims(claim.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
		return err
	}
	return r.markNodePending(ctx, updated, resp.GetCapacityBytes())
}

func (r *resizer) markNodePending(ctx context.Context, claim *v1.PersistentVolumeClaim, size int64) error {
	claim = claim.DeepCopy()
	setResizeStatus(claim, size, v1.PersistentVolumeClaimNodeResizePending)
	setCondition(claim, v1.PersistentVolumeClaimFileSystemResizePending, "",
		"Waiting for user to (re-)start a pod to finish file system resize of volume on node.")
	updated, err := r.client.CoreV1().PersistentVolumeClaims(claim.Namespace).UpdateStatus(ctx, claim, metav1.UpdateOptions{})
	if err != nil {
		return err
	}
	r.event(ctx, updated, v1.EventTypeNormal, "FileSystemResizeRequired", "Require file system resize of volume on node")
	return nil
}

func setResizeStatus(claim *v1.PersistentVolumeClaim, size int64, state v1.ClaimResourceStatus) {
	if claim.Status.AllocatedResources == nil {
		claim.Status.AllocatedResources = v1.ResourceList{}
	}
	claim.Status.AllocatedResources[v1.ResourceStorage] = *newQuantity(size)
	if claim.Status.AllocatedResourceStatuses == nil {
		claim.Status.AllocatedResourceStatuses = map[v1.ResourceName]v1.ClaimResourceStatus{}
	}
	claim.Status.AllocatedResourceStatuses[v1.ResourceStorage] = state
}

// setCondition replaces the claim's resize conditions with one of kind (none when kind is empty).
func setCondition(claim *v1.PersistentVolumeClaim, kind v1.PersistentVolumeClaimConditionType, reason, message string) {
	var kept []v1.PersistentVolumeClaimCondition
	for _, c := range claim.Status.Conditions {
		switch c.Type {
		case v1.PersistentVolumeClaimResizing, v1.PersistentVolumeClaimFileSystemResizePending,
			v1.PersistentVolumeClaimControllerResizeError:
		default:
			kept = append(kept, c)
		}
	}
	if kind != "" {
		kept = append(kept, v1.PersistentVolumeClaimCondition{Type: kind, Status: v1.ConditionTrue,
			LastTransitionTime: metav1.Now(), Reason: reason, Message: message})
	}
	claim.Status.Conditions = kept
}

func (r *resizer) event(ctx context.Context, claim *v1.PersistentVolumeClaim, kind, reason, message string) {
	now := metav1.Now()
	ev := &v1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: claim.Name + ".", Namespace: claim.Namespace},
		InvolvedObject: v1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: claim.Namespace,
			Name: claim.Name, UID: claim.UID, APIVersion: "v1", ResourceVersion: claim.ResourceVersion},
		Reason: reason, Message: message, Type: kind, FirstTimestamp: now, LastTimestamp: now, Count: 1,
		Source: v1.EventSource{Component: "eventpipe-csi-resizer"},
	}
	if _, err := r.client.CoreV1().Events(claim.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		logf("resizer: event %s on %s/%s: %v", reason, claim.Namespace, claim.Name, err)
	}
}

func newQuantity(bytes int64) *resource.Quantity {
	return resource.NewQuantity(bytes, resource.BinarySI)
}
