//! The Identity service: who the driver is, what it can do, and whether a manager answers.

use tonic::{Request, Response, Status};

use crate::proto::{self, plugin_capability};
use crate::{DRIVER_NAME, Driver, Mode, api};

pub struct Identity {
    driver: Driver,
}

impl Identity {
    pub fn new(driver: Driver) -> Self {
        Identity { driver }
    }
}

#[tonic::async_trait]
impl proto::identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _: Request<proto::GetPluginInfoRequest>,
    ) -> Result<Response<proto::GetPluginInfoResponse>, Status> {
        Ok(Response::new(proto::GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<proto::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<proto::GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::{Service, Type, VolumeExpansion, service, volume_expansion};
        let mut capabilities = vec![proto::PluginCapability {
            r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                r#type: volume_expansion::Type::Online as i32,
            })),
        }];
        if self.driver.mode != Mode::Node {
            for t in [
                service::Type::ControllerService,
                service::Type::VolumeAccessibilityConstraints,
            ] {
                capabilities.push(proto::PluginCapability {
                    r#type: Some(Type::Service(Service { r#type: t as i32 })),
                });
            }
        }
        Ok(Response::new(proto::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    /// Ready only when a manager answers (the node list, read through the leader).
    async fn probe(
        &self,
        _: Request<proto::ProbeRequest>,
    ) -> Result<Response<proto::ProbeResponse>, Status> {
        let ready =
            api::call::<serde_json::Value>(&self.driver.api, "GET", "/v1/nodes".into(), None)
                .await
                .is_ok();
        Ok(Response::new(proto::ProbeResponse { ready: Some(ready) }))
    }
}
