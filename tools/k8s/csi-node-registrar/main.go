// Command csi-node-registrar registers a CSI node plugin with the kubelet through the
// kubelet's plugin registration API (k8s.io/kubelet/pkg/apis/pluginregistration/v1), as
// node-driver-registrar does; the Go module proxy serves no version of
// node-driver-registrar, so the tests run this stand-in. It asks the plugin its name
// (CSI GetPluginInfo), serves the registration socket the kubelet's plugin watcher finds
// in its plugins_registry directory, and exits non-zero when the kubelet refuses the
// plugin. The kubelet then calls NodeGetInfo itself and writes the CSINode object.
//
// Usage: csi-node-registrar --csi-address /path/csi.sock
//
//	--kubelet-registration-path /path/csi.sock --plugin-registration-path DIR
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	registerapi.UnimplementedRegistrationServer
	name     string
	endpoint string
	refused  chan string
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.name,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if s.PluginRegistered {
		log.Printf("csi-node-registrar: the kubelet registered %s", r.name)
	} else {
		r.refused <- s.Error
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// pluginName asks the CSI plugin its name, retrying until it answers (up to a minute).
func pluginName(address string) (string, error) {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			return info.Name, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("GetPluginInfo on %s: %w", address, err)
		}
		time.Sleep(time.Second)
	}
}

func main() {
	address := flag.String("csi-address", "/csi/csi.sock", "the CSI plugin's socket, as this process reaches it")
	kubeletPath := flag.String("kubelet-registration-path", "", "the CSI plugin's socket, as the kubelet reaches it")
	registry := flag.String("plugin-registration-path", "/registration", "the kubelet's plugins_registry directory")
	flag.Parse()
	if *kubeletPath == "" {
		log.Fatal("csi-node-registrar: --kubelet-registration-path is required")
	}
	name, err := pluginName(*address)
	if err != nil {
		log.Fatalf("csi-node-registrar: %v", err)
	}
	socket := filepath.Join(*registry, name+"-reg.sock")
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		log.Fatalf("csi-node-registrar: removing the old %s: %v", socket, err)
	}
	listener, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatalf("csi-node-registrar: %v", err)
	}
	r := &registrar{name: name, endpoint: *kubeletPath, refused: make(chan string, 1)}
	server := grpc.NewServer()
	registerapi.RegisterRegistrationServer(server, r)
	go func() {
		if err := server.Serve(listener); err != nil {
			log.Fatalf("csi-node-registrar: serving %s: %v", socket, err)
		}
	}()
	log.Printf("csi-node-registrar: %s (at %s) offered to the kubelet on %s", name, *kubeletPath, socket)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	select {
	case <-signals:
		server.Stop()
		os.Remove(socket)
	case reason := <-r.refused:
		server.Stop()
		os.Remove(socket)
		log.Fatalf("csi-node-registrar: the kubelet refused %s: %s", name, reason)
	}
}
