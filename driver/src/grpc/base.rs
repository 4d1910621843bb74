//! Nomad's BasePlugin service.

use tonic::{Code, Request, Response, Status};

use crate::config::PluginConfig;
use crate::driver::{ConfigError, Driver, PLUGIN_API_VERSION};
use crate::metrics_endpoint::EndpointError;
use crate::node::NodeInfo;
use crate::proto::base::{
    ConfigSchemaRequest, ConfigSchemaResponse, PluginInfoRequest, PluginInfoResponse, PluginType,
    SetConfigRequest, SetConfigResponse, base_plugin_server::BasePlugin,
};
use crate::task::error_chain;
use crate::{DRIVER_NAME, DRIVER_VERSION};

pub struct BasePluginService {
    driver: Driver,
}

impl BasePluginService {
    pub fn new(driver: Driver) -> Self {
        Self { driver }
    }
}

#[tonic::async_trait]
impl BasePlugin for BasePluginService {
    async fn plugin_info(
        &self,
        _request: Request<PluginInfoRequest>,
    ) -> Result<Response<PluginInfoResponse>, Status> {
        Ok(Response::new(PluginInfoResponse {
            r#type: PluginType::Driver as i32,
            plugin_api_versions: vec![PLUGIN_API_VERSION.to_owned()],
            plugin_version: DRIVER_VERSION.to_owned(),
            name: DRIVER_NAME.to_owned(),
        }))
    }

    async fn config_schema(
        &self,
        _request: Request<ConfigSchemaRequest>,
    ) -> Result<Response<ConfigSchemaResponse>, Status> {
        Ok(Response::new(ConfigSchemaResponse {
            spec: Some(PluginConfig::schema()),
        }))
    }

    async fn set_config(
        &self,
        request: Request<SetConfigRequest>,
    ) -> Result<Response<SetConfigResponse>, Status> {
        let request = request.into_inner();
        if !request.plugin_api_version.is_empty()
            && request.plugin_api_version != PLUGIN_API_VERSION
        {
            tracing::warn!(
                requested = %request.plugin_api_version,
                supported = PLUGIN_API_VERSION,
                "Nomad requested an unexpected plugin API version"
            );
        }

        // Rejecting the config makes the Nomad agent fail to start, with this message.
        if let Some(nomad_config) = &request.nomad_config {
            self.driver
                .set_node_info(NodeInfo::from_proto(nomad_config));
        }
        let long_lived = request.nomad_config.is_some();
        self.driver
            .set_config(&request.msgpack_config, long_lived)
            .await
            .map_err(|error| {
                // The endpoint's message gets its causes, such as "Address already in use",
                // while a decode message is complete on its own.
                match &error {
                    ConfigError::Invalid(_) => Status::invalid_argument(error.to_string()),
                    ConfigError::Metrics(endpoint) => {
                        let code = match endpoint {
                            EndpointError::Change { .. } => Code::FailedPrecondition,
                            EndpointError::Start { .. } => Code::Unavailable,
                        };
                        Status::new(code, error_chain(endpoint))
                    }
                }
            })?;
        Ok(Response::new(SetConfigResponse {}))
    }
}
