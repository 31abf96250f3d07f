package main

// Serving: the CSI socket, and the kubelet plugin registration socket in its plugins_registry directory.
// The kubelet's plugin watcher finds the registration socket, asks GetInfo for the driver's name and CSI
// endpoint, calls NodeGetInfo on that endpoint, records the driver in the node's CSINode object and reports
// back through NotifyRegistrationStatus.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registration struct {
	registerapi.UnimplementedRegistrationServer
	name     string
	endpoint string
}

func (r *registration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.name,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registration) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !s.PluginRegistered {
		logf("kubelet refused the registration: %s", s.Error)
	} else {
		logf("registered with the kubelet as %s", r.name)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// listenUnix removes a stale socket left by an earlier run, then listens.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return net.Listen("unix", path)
}

func runDriver(name, endpoint, nodeID, root, registry string) error {
	if endpoint == "" || nodeID == "" || registry == "" {
		return fmt.Errorf("--endpoint, --node-id and --registration-dir are required")
	}
	for _, dir := range []string{"volumes", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o700); err != nil {
			return err
		}
	}
	d := &driver{name: name, nodeID: nodeID, root: root, onlineResize: canResizeOnline()}
	csiListener, err := listenUnix(endpoint)
	if err != nil {
		return fmt.Errorf("CSI socket: %w", err)
	}
	csiServer := grpc.NewServer(grpc.UnaryInterceptor(logErrors))
	csi.RegisterIdentityServer(csiServer, d)
	csi.RegisterControllerServer(csiServer, d)
	csi.RegisterNodeServer(csiServer, d)

	regPath := filepath.Join(registry, name+"-reg.sock")
	regListener, err := listenUnix(regPath)
	if err != nil {
		return fmt.Errorf("registration socket: %w", err)
	}
	regServer := grpc.NewServer()
	registerapi.RegisterRegistrationServer(regServer, &registration{name: name, endpoint: endpoint})

	errs := make(chan error, 2)
	go func() { errs <- csiServer.Serve(csiListener) }()
	go func() { errs <- regServer.Serve(regListener) }()
	logf("driver %s %s serving %s (registration %s, data %s, online ext4 resize %v)",
		name, version, endpoint, regPath, root, d.onlineResize)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err = <-errs:
	case sig := <-stop:
		logf("stopping on %s", sig)
	}
	regServer.GracefulStop()
	csiServer.GracefulStop()
	_ = os.Remove(regPath) // the kubelet deregisters the driver when its socket goes
	return err
}

func logErrors(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err != nil {
		logf("%s: %v", info.FullMethod, err)
	}
	return resp, err
}
