// The `GET /` banner (name, cluster, version, tagline) for the devstack node.
//
// In the distribution this handler lives in the rest-root module, which Elastic does not publish to Maven
// Central; clients and people probe `GET /` first, so the devstack loads this small module in its place.
import java.util.Collection;
import java.util.List;
import java.util.function.Predicate;
import java.util.function.Supplier;

import org.apache.lucene.util.Version;
import org.elasticsearch.Build;
import org.elasticsearch.action.ActionListener;
import org.elasticsearch.action.admin.cluster.state.ClusterStateRequest;
import org.elasticsearch.client.internal.node.NodeClient;
import org.elasticsearch.cluster.node.DiscoveryNodes;
import org.elasticsearch.core.TimeValue;
import org.elasticsearch.features.NodeFeature;
import org.elasticsearch.plugins.ActionPlugin;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.rest.BaseRestHandler;
import org.elasticsearch.rest.RestHandler;
import org.elasticsearch.rest.RestRequest;
import org.elasticsearch.rest.RestResponse;
import org.elasticsearch.rest.RestStatus;
import org.elasticsearch.xcontent.XContentBuilder;

public final class EventpipeRootPlugin extends Plugin implements ActionPlugin {
    @Override
    public Collection<RestHandler> getRestHandlers(
        RestHandlersServices services,
        Supplier<DiscoveryNodes> nodes,
        Predicate<NodeFeature> clusterSupportsFeature
    ) {
        return List.of(new RootHandler(nodes));
    }

    static final class RootHandler extends BaseRestHandler {
        private final Supplier<DiscoveryNodes> nodes;

        RootHandler(Supplier<DiscoveryNodes> nodes) {
            this.nodes = nodes;
        }

        @Override
        public String getName() {
            return "eventpipe_root_action";
        }

        @Override
        public List<Route> routes() {
            return List.of(new Route(RestRequest.Method.GET, "/"), new Route(RestRequest.Method.HEAD, "/"));
        }

        @Override
        protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
            ClusterStateRequest state = new ClusterStateRequest(TimeValue.timeValueSeconds(30)).clear().metadata(true);
            return channel -> client.admin().cluster().state(state, ActionListener.wrap(response -> {
                Build build = Build.current();
                XContentBuilder body = channel.newBuilder();
                body.startObject();
                body.field("name", nodes.get().getLocalNode().getName());
                body.field("cluster_name", response.getClusterName().value());
                body.field("cluster_uuid", response.getState().metadata().clusterUUID());
                body.startObject("version");
                body.field("number", build.qualifiedVersion());
                body.field("build_flavor", build.flavor());
                body.field("build_type", build.type().displayName());
                body.field("build_hash", build.hash());
                body.field("build_date", build.date());
                body.field("build_snapshot", build.isSnapshot());
                body.field("lucene_version", Version.LATEST.toString());
                body.field("minimum_wire_compatibility_version", build.minWireCompatVersion());
                body.field("minimum_index_compatibility_version", build.minIndexCompatVersion());
                body.endObject();
                body.field("tagline", "You Know, for Search");
                body.endObject();
                channel.sendResponse(new RestResponse(RestStatus.OK, body));
            }, e -> {
                try {
                    channel.sendResponse(new RestResponse(channel, e));
                } catch (java.io.IOException io) {
                    e.addSuppressed(io);
                }
            }));
        }
    }
}
