//! The deployment rules of `template.yaml`, checked without AWS: least-privilege IAM, every VPC endpoint
//! behind a condition, and a relay function that cargo-lambda builds and the schedule runs one at a time.
//!
//! CloudFormation accepts intrinsic functions in a short form (`!Ref X`, a YAML tag) and a long form
//! (`{"Ref": "X"}`, `{"Fn::If": [...]}`); [`intrinsic`] reads both, so the rules hold whichever a later edit
//! uses. `cfn-lint` and `sam validate --lint` (scripts/lint-template.sh) check the schema; these tests check
//! what a linter does not know: our own policy.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;

use serde_yaml::Value;

type TestResult = Result<(), Box<dyn Error>>;

/// The actions Lambda needs to attach a function to a VPC. They are the only ones allowed on `"*"`:
/// `ec2:Describe*` actions work only on `"*"`, and Lambda checks the role for all of them on `"*"`.
const ENI_ACTIONS: &[&str] = &[
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
];

/// AWS allows a target function at most 14 minutes when called by the relay (SPEC section 9).
const LONGEST_TARGET_TIMEOUT_SECONDS: u64 = 14 * 60;

fn template() -> Result<Value, Box<dyn Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml");
    Ok(serde_yaml::from_str(&std::fs::read_to_string(path)?)?)
}

/// An intrinsic function call in either form, as (name without `Fn::`, argument).
fn intrinsic(value: &Value) -> Option<(String, &Value)> {
    match value {
        Value::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            Some((tag.trim_start_matches('!').to_string(), &tagged.value))
        }
        Value::Mapping(map) if map.len() == 1 => {
            let (key, argument) = map.iter().next()?;
            let key = key.as_str()?;
            let name = if key == "Ref" || key == "Condition" {
                key
            } else {
                key.strip_prefix("Fn::")?
            };
            Some((name.to_string(), argument))
        }
        _ => None,
    }
}

/// The name `!Ref` points at, if `value` is a `Ref`.
fn ref_name(value: &Value) -> Option<&str> {
    match intrinsic(value) {
        Some((name, argument)) if name == "Ref" => argument.as_str(),
        _ => None,
    }
}

fn is_no_value(value: &Value) -> bool {
    ref_name(value) == Some("AWS::NoValue")
}

/// Every name referenced with `Ref` or `!Condition` anywhere inside `value`.
fn references(value: &Value, out: &mut BTreeSet<String>) {
    if let Some((name, argument)) = intrinsic(value) {
        if name == "Ref" || name == "Condition" {
            if let Some(target) = argument.as_str() {
                out.insert(target.to_string());
            }
        }
        references(argument, out);
        return;
    }
    match value {
        Value::Sequence(items) => items.iter().for_each(|item| references(item, out)),
        Value::Mapping(map) => map.values().for_each(|item| references(item, out)),
        Value::Tagged(tagged) => references(&tagged.value, out),
        _ => {}
    }
}

/// The parameters a condition depends on, following `!Condition` to other conditions.
fn condition_parameters(template: &Value, condition: &str) -> BTreeSet<String> {
    let conditions = &template["Conditions"];
    let mut seen = BTreeSet::new();
    let mut pending = vec![condition.to_string()];
    let mut parameters = BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let mut names = BTreeSet::new();
        references(&conditions[name.as_str()], &mut names);
        for referenced in names {
            if conditions.get(referenced.as_str()).is_some() {
                pending.push(referenced);
            } else {
                parameters.insert(referenced);
            }
        }
    }
    parameters
}

fn resources_of_type<'a>(template: &'a Value, kind: &str) -> Vec<(&'a str, &'a Value)> {
    let Some(resources) = template["Resources"].as_mapping() else {
        return Vec::new();
    };
    resources
        .iter()
        .filter(|(_, resource)| resource["Type"].as_str() == Some(kind))
        .filter_map(|(name, resource)| Some((name.as_str()?, resource)))
        .collect()
}

fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => vec![s.as_str()],
        Value::Sequence(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// One IAM policy statement with the condition it is created under (from `!If` or the resource).
struct Statement<'a> {
    origin: String,
    condition: Option<String>,
    body: &'a Value,
}

impl Statement<'_> {
    fn actions(&self) -> Vec<&str> {
        strings(&self.body["Action"])
    }

    fn has_wildcard_resource(&self) -> bool {
        strings(&self.body["Resource"]).contains(&"*")
    }
}

/// Unwraps `!If [condition, statement, !Ref AWS::NoValue]`; anything else in the false branch is kept
/// with a negated condition so a rule can never be skipped by moving a statement there.
fn unwrap_statement<'a>(
    origin: &str,
    condition: Option<String>,
    value: &'a Value,
    out: &mut Vec<Statement<'a>>,
) {
    if let Some((name, Value::Sequence(arguments))) = intrinsic(value) {
        if name == "If" && arguments.len() == 3 {
            let branch_condition = arguments[0].as_str().unwrap_or("?").to_string();
            unwrap_statement(origin, Some(branch_condition.clone()), &arguments[1], out);
            if !is_no_value(&arguments[2]) {
                unwrap_statement(
                    origin,
                    Some(format!("!{branch_condition}")),
                    &arguments[2],
                    out,
                );
            }
            return;
        }
    }
    out.push(Statement {
        origin: origin.to_string(),
        condition,
        body: value,
    });
}

/// Every statement of every IAM role and policy in the template.
fn policy_statements(template: &Value) -> Vec<Statement<'_>> {
    let mut out = Vec::new();
    let mut documents: Vec<(String, Option<String>, &Value)> = Vec::new();
    for (name, role) in resources_of_type(template, "AWS::IAM::Role") {
        let condition = role["Condition"].as_str().map(String::from);
        for policy in role["Properties"]["Policies"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            documents.push((
                name.to_string(),
                condition.clone(),
                &policy["PolicyDocument"],
            ));
        }
    }
    for kind in ["AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"] {
        for (name, policy) in resources_of_type(template, kind) {
            let condition = policy["Condition"].as_str().map(String::from);
            documents.push((
                name.to_string(),
                condition,
                &policy["Properties"]["PolicyDocument"],
            ));
        }
    }
    for (origin, condition, document) in documents {
        for statement in document["Statement"].as_sequence().into_iter().flatten() {
            unwrap_statement(&origin, condition.clone(), statement, &mut out);
        }
    }
    out
}

/// The one relay function and its name.
fn relay_function(template: &Value) -> Result<(&str, &Value), Box<dyn Error>> {
    let functions = resources_of_type(template, "AWS::Serverless::Function");
    match functions.as_slice() {
        [only] => Ok(*only),
        other => Err(format!(
            "expected exactly one AWS::Serverless::Function, found {}",
            other.len()
        )
        .into()),
    }
}

/// The condition under which the function gets a `VpcConfig` (`VpcConfig: !If [C, {...}, NoValue]`).
fn vpc_condition(function: &Value) -> Result<String, Box<dyn Error>> {
    match intrinsic(&function["Properties"]["VpcConfig"]) {
        Some((name, Value::Sequence(arguments)))
            if name == "If" && arguments.len() == 3 && is_no_value(&arguments[2]) =>
        {
            Ok(arguments[0].as_str().ok_or("VpcConfig condition is not a name")?.to_string())
        }
        _ => Err("VpcConfig must be `!If [condition, {...}, !Ref AWS::NoValue]` so the template deploys without a VPC".into()),
    }
}

#[test]
fn no_statement_allows_a_wildcard_action() -> TestResult {
    let template = template()?;
    let statements = policy_statements(&template);
    assert!(
        statements.len() >= 8,
        "expected the relay's statements, found {}",
        statements.len()
    );
    for statement in &statements {
        assert_eq!(
            statement.body["Effect"].as_str(),
            Some("Allow"),
            "{}: only Allow statements",
            statement.origin
        );
        assert!(
            statement.body.get("NotAction").is_none(),
            "{}: NotAction grants everything else",
            statement.origin
        );
        assert!(
            statement.body.get("NotResource").is_none(),
            "{}: NotResource grants everything else",
            statement.origin
        );
        let actions = statement.actions();
        assert!(
            !actions.is_empty(),
            "{}: statement without literal actions: {:?}",
            statement.origin,
            statement.body
        );
        for action in actions {
            assert!(
                !action.contains('*'),
                "{}: wildcard action {action:?}",
                statement.origin
            );
        }
    }
    Ok(())
}

#[test]
fn only_vpc_network_interface_actions_apply_to_every_resource_and_only_with_a_vpc() -> TestResult {
    let template = template()?;
    let (_, function) = relay_function(&template)?;
    let vpc_condition = vpc_condition(function)?;
    let wildcard: Vec<Statement<'_>> = policy_statements(&template)
        .into_iter()
        .filter(Statement::has_wildcard_resource)
        .collect();
    assert_eq!(
        wildcard.len(),
        1,
        "exactly one statement may use Resource \"*\" (the ENI actions)"
    );
    let statement = &wildcard[0];
    let actions: BTreeSet<&str> = statement.actions().into_iter().collect();
    assert_eq!(
        actions,
        ENI_ACTIONS.iter().copied().collect::<BTreeSet<_>>()
    );
    assert_eq!(
        statement.condition.as_deref(),
        Some(vpc_condition.as_str()),
        "ENI statement outside the VPC condition"
    );
    assert!(
        condition_parameters(&template, &vpc_condition).contains("VpcId"),
        "the VPC condition must depend on the VpcId parameter"
    );
    Ok(())
}

#[test]
fn every_other_statement_names_its_resources() -> TestResult {
    let template = template()?;
    for statement in policy_statements(&template)
        .iter()
        .filter(|s| !s.has_wildcard_resource())
    {
        let resource = &statement.body["Resource"];
        assert!(
            !resource.is_null(),
            "{}: statement without Resource",
            statement.origin
        );
        for literal in strings(resource) {
            assert!(
                !literal.contains('*'),
                "{}: literal wildcard resource {literal:?}",
                statement.origin
            );
        }
    }
    Ok(())
}

#[test]
fn statements_on_optional_arn_lists_exist_only_when_the_list_is_not_empty() -> TestResult {
    let template = template()?;
    let parameters = template["Parameters"].as_mapping().ok_or("no Parameters")?;
    let lists: BTreeSet<&str> = parameters
        .iter()
        .filter(|(_, p)| p["Type"].as_str() == Some("CommaDelimitedList"))
        .filter_map(|(name, _)| name.as_str())
        .collect();
    let mut guarded = BTreeSet::new();
    for statement in policy_statements(&template) {
        let mut referenced = BTreeSet::new();
        references(statement.body, &mut referenced);
        for list in referenced
            .iter()
            .filter(|name| lists.contains(name.as_str()))
        {
            // An empty CommaDelimitedList becomes [""], which IAM rejects as a resource.
            let condition = statement
                .condition
                .as_deref()
                .ok_or_else(|| format!("{list} used without a condition"))?;
            assert!(
                condition_parameters(&template, condition).contains(list),
                "statement on {list} is guarded by {condition}, which does not test {list}"
            );
            guarded.insert(list.clone());
        }
    }
    let expected: BTreeSet<String> = [
        "TargetFunctionArns",
        "DestinationQueueArns",
        "DestinationTopicArns",
        "DestinationBucketArns",
        "SecretArns",
        "KmsKeyArns",
        "MskClusterArns",
        "SchemaRegistryArns",
        "MskFailureTopicArns",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(guarded, expected);
    for list in &expected {
        assert_eq!(
            parameters[list.as_str()]["Default"].as_str(),
            Some(""),
            "{list} must default to empty"
        );
    }
    Ok(())
}

#[test]
fn each_service_gets_exactly_the_actions_the_relay_calls() -> TestResult {
    let template = template()?;
    let by_parameter: BTreeMap<String, BTreeSet<String>> = policy_statements(&template)
        .into_iter()
        .filter_map(|statement| {
            let mut referenced = BTreeSet::new();
            references(&statement.body["Resource"], &mut referenced);
            // MSK has four statements on its one list: checked by msk_statements_name_the_clusters_topics_and_groups.
            let parameter = referenced.into_iter().find(|name| name.ends_with("Arns") && name != "MskClusterArns")?;
            Some((
                parameter,
                statement.actions().into_iter().map(String::from).collect(),
            ))
        })
        .collect();
    let expected = |actions: &[&str]| {
        actions
            .iter()
            .map(|a| a.to_string())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        by_parameter["TargetFunctionArns"],
        expected(&["lambda:InvokeFunction", "lambda:GetFunctionConfiguration"])
    );
    assert_eq!(
        by_parameter["DestinationQueueArns"],
        expected(&["sqs:SendMessage", "sqs:GetQueueUrl"])
    );
    assert_eq!(
        by_parameter["DestinationTopicArns"],
        expected(&["sns:Publish"])
    );
    assert_eq!(
        by_parameter["DestinationBucketArns"],
        expected(&["s3:PutObject"])
    );
    assert_eq!(
        by_parameter["SecretArns"],
        expected(&["secretsmanager:GetSecretValue"])
    );
    assert_eq!(
        by_parameter["KmsKeyArns"],
        expected(&["kms:Decrypt", "kms:GenerateDataKey"])
    );
    assert_eq!(by_parameter["SchemaRegistryArns"], expected(&["glue:GetSchemaVersion", "glue:GetSchema"]));
    assert_eq!(by_parameter["MskFailureTopicArns"], expected(&["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]));
    Ok(())
}

/// Evaluates the intrinsic functions a policy `Resource` uses (`!Ref` of a list parameter, `!Join`,
/// `!Split`, `!Sub` with a variable map) for given parameter values.
fn evaluate_list(value: &Value, parameters: &BTreeMap<&str, Vec<&str>>) -> Result<Vec<String>, Box<dyn Error>> {
    let one = |value: &Value| -> Result<String, Box<dyn Error>> {
        let items = evaluate_list(value, parameters)?;
        match items.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(format!("expected one string, got {items:?}").into()),
        }
    };
    let Some((name, arguments)) = intrinsic(value) else {
        return Ok(vec![value.as_str().ok_or("neither a string nor an intrinsic")?.to_string()]);
    };
    let arguments = match arguments {
        Value::Sequence(items) => items.clone(),
        other => vec![other.clone()],
    };
    match name.as_str() {
        "Ref" => Ok(parameters
            .get(arguments[0].as_str().ok_or("Ref of a non-name")?)
            .ok_or("unknown parameter")?
            .iter()
            .map(|s| s.to_string())
            .collect()),
        "Join" => Ok(vec![evaluate_list(&arguments[1], parameters)?.join(arguments[0].as_str().ok_or("delimiter")?)]),
        "Split" => Ok(one(&arguments[1])?.split(arguments[0].as_str().ok_or("delimiter")?).map(String::from).collect()),
        "Sub" => {
            let mut text = arguments[0].as_str().ok_or("Sub template")?.to_string();
            for (variable, value) in arguments[1].as_mapping().ok_or("Sub variables")? {
                let variable = variable.as_str().ok_or("variable name")?;
                text = text.replace(&format!("${{{variable}}}"), &one(value)?);
            }
            Ok(vec![text])
        }
        other => Err(format!("unsupported intrinsic {other}").into()),
    }
}

#[test]
fn glue_access_is_limited_to_the_named_registries_and_their_schemas() -> TestResult {
    let template = template()?;
    let statement = policy_statements(&template)
        .into_iter()
        .find(|s| s.actions().contains(&"glue:GetSchemaVersion"))
        .ok_or("no statement grants glue:GetSchemaVersion")?;
    assert_eq!(statement.condition.as_deref(), Some("HasSchemaRegistries"));
    let parameters = BTreeMap::from([(
        "SchemaRegistryArns",
        vec![
            "arn:aws:glue:us-east-1:123456789012:registry/orders",
            "arn:aws:glue:eu-west-1:123456789012:registry/payments",
        ],
    )]);
    let resources = evaluate_list(&statement.body["Resource"], &parameters)?;
    assert_eq!(
        resources,
        vec![
            "arn:aws:glue:us-east-1:123456789012:registry/orders",
            "arn:aws:glue:eu-west-1:123456789012:registry/payments",
            "arn:aws:glue:us-east-1:123456789012:schema/orders/*",
            "arn:aws:glue:eu-west-1:123456789012:schema/payments/*",
        ]
    );
    let one = BTreeMap::from([("SchemaRegistryArns", vec!["arn:aws:glue:us-east-1:123456789012:registry/orders"])]);
    assert_eq!(
        evaluate_list(&statement.body["Resource"], &one)?,
        vec!["arn:aws:glue:us-east-1:123456789012:registry/orders", "arn:aws:glue:us-east-1:123456789012:schema/orders/*"]
    );
    Ok(())
}

#[test]
fn logs_are_written_only_to_the_functions_own_log_group() -> TestResult {
    let template = template()?;
    let (_, function) = relay_function(&template)?;
    let log_group = ref_name(&function["Properties"]["LoggingConfig"]["LogGroup"]).ok_or(
        "the function must log to a log group of this stack (LoggingConfig.LogGroup: !Ref ...)",
    )?;
    assert_eq!(
        template["Resources"][log_group]["Type"].as_str(),
        Some("AWS::Logs::LogGroup")
    );
    let log_statements: Vec<Statement<'_>> = policy_statements(&template)
        .into_iter()
        .filter(|s| s.actions().iter().any(|a| a.starts_with("logs:")))
        .collect();
    assert_eq!(log_statements.len(), 1);
    let statement = &log_statements[0];
    assert_eq!(statement.condition, None);
    let actions: BTreeSet<&str> = statement.actions().into_iter().collect();
    assert_eq!(
        actions,
        BTreeSet::from(["logs:CreateLogStream", "logs:PutLogEvents"])
    );
    let (name, argument) =
        intrinsic(&statement.body["Resource"]).ok_or("log Resource must be the log group's Arn")?;
    assert_eq!(name, "GetAtt");
    let target = match argument {
        Value::String(dotted) => dotted.clone(),
        Value::Sequence(parts) => parts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("."),
        other => return Err(format!("unexpected GetAtt argument {other:?}").into()),
    };
    assert_eq!(target, format!("{log_group}.Arn"));
    Ok(())
}

#[test]
fn the_function_uses_its_own_role_not_sam_managed_policies() -> TestResult {
    let template = template()?;
    let (_, function) = relay_function(&template)?;
    let properties = &function["Properties"];
    // SAM's Policies (and its default role) attach AWSLambdaBasicExecutionRole and, with a VPC,
    // AWSLambdaVPCAccessExecutionRole: log and ENI actions on every resource.
    assert!(
        properties.get("Policies").is_none(),
        "SAM Policies attach managed policies on \"*\""
    );
    let (name, _) = intrinsic(&properties["Role"]).ok_or("the function must name its Role")?;
    assert_eq!(name, "GetAtt");
    for (role, resource) in resources_of_type(&template, "AWS::IAM::Role") {
        assert!(
            resource["Properties"].get("ManagedPolicyArns").is_none(),
            "{role} attaches managed policies"
        );
        let trust = &resource["Properties"]["AssumeRolePolicyDocument"]["Statement"][0];
        assert_eq!(
            trust["Principal"]["Service"].as_str(),
            Some("lambda.amazonaws.com")
        );
    }
    Ok(())
}

#[test]
fn every_vpc_endpoint_is_behind_a_condition_that_tests_the_endpoint_switch() -> TestResult {
    let template = template()?;
    let endpoints = resources_of_type(&template, "AWS::EC2::VPCEndpoint");
    let mut services = BTreeMap::new();
    for (name, endpoint) in &endpoints {
        let condition = endpoint["Condition"]
            .as_str()
            .ok_or_else(|| format!("{name} has no Condition"))?;
        let parameters = condition_parameters(&template, condition);
        assert!(
            parameters.contains("CreateVpcEndpoints"),
            "{name}: {condition} does not test CreateVpcEndpoints"
        );
        assert!(
            parameters.contains("VpcId"),
            "{name}: {condition} does not test VpcId"
        );
        let properties = &endpoint["Properties"];
        let (function, argument) =
            intrinsic(&properties["ServiceName"]).ok_or("ServiceName must use !Sub")?;
        assert_eq!(function, "Sub");
        let service = argument
            .as_str()
            .and_then(|s| s.strip_prefix("com.amazonaws.${AWS::Region}."))
            .ok_or_else(|| format!("{name}: unexpected ServiceName {argument:?}"))?;
        let kind = properties["VpcEndpointType"].as_str().unwrap_or("Gateway");
        if kind == "Interface" {
            assert_eq!(
                properties["PrivateDnsEnabled"].as_bool(),
                Some(true),
                "{name}: private DNS lets the SDK's default endpoint resolve to it"
            );
        }
        services.insert(service.to_string(), kind.to_string());
    }
    let expected: BTreeMap<String, String> = [
        ("lambda", "Interface"),
        ("sts", "Interface"),
        ("secretsmanager", "Interface"),
        ("sqs", "Interface"),
        ("sns", "Interface"),
        ("kafka", "Interface"),
        ("s3", "Gateway"),
    ]
    .into_iter()
    .map(|(s, k)| (s.to_string(), k.to_string()))
    .collect();
    assert_eq!(services, expected);
    Ok(())
}

#[test]
fn endpoints_admit_only_https_from_the_relays_security_group() -> TestResult {
    let template = template()?;
    let (_, function) = relay_function(&template)?;
    let mut function_groups = BTreeSet::new();
    references(&function["Properties"]["VpcConfig"], &mut function_groups);
    for (name, endpoint) in resources_of_type(&template, "AWS::EC2::VPCEndpoint") {
        if endpoint["Properties"]["VpcEndpointType"].as_str() != Some("Interface") {
            continue;
        }
        let groups = endpoint["Properties"]["SecurityGroupIds"]
            .as_sequence()
            .ok_or("no SecurityGroupIds")?;
        assert_eq!(groups.len(), 1, "{name}");
        let group = ref_name(&groups[0]).ok_or("endpoint group must be a stack resource")?;
        let ingress = template["Resources"][group]["Properties"]["SecurityGroupIngress"]
            .as_sequence()
            .ok_or_else(|| format!("{group} has no ingress"))?;
        assert_eq!(ingress.len(), 1, "{group}");
        let rule = &ingress[0];
        assert_eq!(
            (
                rule["IpProtocol"].as_str(),
                rule["FromPort"].as_u64(),
                rule["ToPort"].as_u64()
            ),
            (Some("tcp"), Some(443), Some(443))
        );
        let source = ref_name(&rule["SourceSecurityGroupId"])
            .ok_or("ingress must come from a security group")?;
        assert!(
            function_groups.contains(source),
            "{group} admits {source}, which the relay does not use"
        );
        assert!(rule.get("CidrIp").is_none());
    }
    Ok(())
}

#[test]
fn endpoint_ids_are_output_under_the_endpoints_condition() -> TestResult {
    let template = template()?;
    let outputs = template["Outputs"].as_mapping().ok_or("no Outputs")?;
    for (name, endpoint) in resources_of_type(&template, "AWS::EC2::VPCEndpoint") {
        let output = outputs
            .values()
            .find(|output| ref_name(&output["Value"]) == Some(name))
            .ok_or_else(|| format!("no output for {name}"))?;
        assert_eq!(
            output["Condition"], endpoint["Condition"],
            "{name}'s output"
        );
    }
    let (function_name, _) = relay_function(&template)?;
    let function_arn = outputs.values().any(|output| {
        matches!(intrinsic(&output["Value"]), Some((f, Value::String(a))) if f == "GetAtt" && *a == format!("{function_name}.Arn"))
    });
    assert!(function_arn, "the function ARN must be an output");
    Ok(())
}

#[test]
fn the_function_is_an_arm64_cargo_lambda_build_on_provided_al2023() -> TestResult {
    let template = template()?;
    let (_, function) = relay_function(&template)?;
    assert_eq!(
        function["Metadata"]["BuildMethod"].as_str(),
        Some("rust-cargolambda")
    );
    assert_eq!(
        function["Metadata"]["BuildProperties"]["Binary"].as_str(),
        Some("kafka-lambda-relay")
    );
    let properties = &function["Properties"];
    assert_eq!(properties["Runtime"].as_str(), Some("provided.al2023"));
    assert_eq!(properties["Handler"].as_str(), Some("bootstrap"));
    let architectures = properties["Architectures"]
        .as_sequence()
        .ok_or("no Architectures")?;
    assert_eq!(architectures.len(), 1);
    let architecture = match ref_name(&architectures[0]) {
        Some(parameter) => template["Parameters"][parameter]["Default"].as_str(),
        None => architectures[0].as_str(),
    };
    assert_eq!(architecture, Some("arm64"));
    Ok(())
}

#[test]
fn the_schedule_passes_the_mappings_parameter_as_input() -> TestResult {
    let template = template()?;
    let (_, function) = relay_function(&template)?;
    let events = function["Properties"]["Events"]
        .as_mapping()
        .ok_or("no Events")?;
    let schedules: Vec<&Value> = events
        .values()
        .filter(|e| e["Type"].as_str() == Some("Schedule"))
        .collect();
    assert_eq!(schedules.len(), 1);
    let properties = &schedules[0]["Properties"];
    assert_eq!(ref_name(&properties["Input"]), Some("MappingsJson"));
    assert_eq!(
        ref_name(&properties["Schedule"]),
        Some("ScheduleExpression")
    );
    assert_eq!(
        template["Parameters"]["MappingsJson"]["Type"].as_str(),
        Some("String")
    );
    Ok(())
}

#[test]
fn scheduled_runs_do_not_pile_up() -> TestResult {
    let template = template()?;
    let (_, function) = relay_function(&template)?;
    let properties = &function["Properties"];
    // The reserved concurrency is MaximumWorkers (workers of the scheduled run), 1 unless raised.
    let concurrency = &properties["ReservedConcurrentExecutions"];
    let default = match ref_name(concurrency) {
        Some(parameter) => template["Parameters"][parameter]["Default"].as_u64(),
        None => concurrency.as_u64(),
    };
    assert_eq!(default, Some(1));
    // Ticks throttled by that concurrency must expire, not wait in Lambda's async queue for hours.
    assert_eq!(
        properties["EventInvokeConfig"]["MaximumEventAgeInSeconds"].as_u64(),
        Some(60)
    );
    assert_eq!(
        properties["EventInvokeConfig"]["MaximumRetryAttempts"].as_u64(),
        Some(0)
    );
    Ok(())
}

#[test]
fn the_default_timeout_outlasts_the_longest_target_invocation() -> TestResult {
    let template = template()?;
    let (_, function) = relay_function(&template)?;
    let parameter =
        ref_name(&function["Properties"]["Timeout"]).ok_or("Timeout must be a parameter")?;
    let timeout = &template["Parameters"][parameter];
    let default = timeout["Default"]
        .as_u64()
        .ok_or("timeout parameter needs a numeric Default")?;
    assert!(
        default > LONGEST_TARGET_TIMEOUT_SECONDS,
        "default {default} s leaves no room for a 14-minute target"
    );
    assert_eq!(timeout["MaxValue"].as_u64(), Some(900), "Lambda's limit");
    assert!(
        ref_name(&function["Properties"]["MemorySize"]).is_some(),
        "MemorySize must be a parameter"
    );
    Ok(())
}

/// The `key = value` lines of one table of `samconfig.toml`; enough TOML for the flat table we write.
fn samconfig_table(header: &str) -> Result<BTreeMap<String, String>, Box<dyn Error>> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/samconfig.toml"))?;
    let mut lines = text.lines().skip_while(|line| line.trim() != header);
    lines
        .next()
        .ok_or_else(|| format!("samconfig.toml has no {header}"))?;
    Ok(lines
        .take_while(|line| !line.starts_with('['))
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once(" = "))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect())
}

#[test]
fn samconfig_example_overrides_name_template_parameters_and_valid_mappings() -> TestResult {
    let template = template()?;
    let overrides = samconfig_table("[default.deploy.parameters.parameter_overrides]")?;
    assert!(
        overrides.len() >= 5,
        "expected an example for the main parameters, found {overrides:?}"
    );
    for key in overrides.keys() {
        assert!(
            template["Parameters"].get(key.as_str()).is_some(),
            "samconfig.toml overrides unknown parameter {key}"
        );
    }
    let mappings = overrides["MappingsJson"].trim_matches('\'');
    let config = kafka_lambda_relay::config::RelayConfig::parse_valid(mappings)?;
    assert_eq!(config.mappings.len(), 1);
    let deploy = samconfig_table("[default.deploy.parameters]")?;
    assert_eq!(deploy["capabilities"], "\"CAPABILITY_IAM\"");
    assert_eq!(deploy["confirm_changeset"], "true");
    Ok(())
}

/// Workers and a continuous run's successor are asynchronous invocations of the relay itself: allowed on
/// its own ARN only (no wildcard, no other function), only when workers or continuous mode are enabled, and
/// its reserved concurrency is the workers' bound.
#[test]
fn the_relay_may_invoke_only_itself_to_start_workers_and_its_concurrency_is_maximum_workers() -> TestResult {
    let template = template()?;
    let (function_name, function) = relay_function(&template)?;
    let starts: Vec<Statement<'_>> = policy_statements(&template)
        .into_iter()
        .filter(|s| s.actions().contains(&"lambda:InvokeFunction") && s.origin != "RelayRole")
        .collect();
    assert_eq!(starts.len(), 1, "one statement lets the relay start workers");
    let statement = &starts[0];
    assert_eq!(statement.actions(), ["lambda:InvokeFunction"]);
    let resource = &statement.body["Resource"];
    let Some((name, argument)) = intrinsic(resource) else { panic!("the resource is the function's ARN: {resource:?}") };
    let target = match argument {
        Value::String(path) => path.clone(),
        Value::Sequence(parts) => format!("{}.{}", parts[0].as_str().unwrap_or(""), parts[1].as_str().unwrap_or("")),
        other => panic!("unexpected GetAtt argument {other:?}"),
    };
    assert_eq!((name.as_str(), target.as_str()), ("GetAtt", format!("{function_name}.Arn").as_str()), "only the relay's own ARN");
    assert!(!statement.has_wildcard_resource());
    let condition = statement.condition.clone().expect("only when workers or continuous mode are enabled");
    let parameters = condition_parameters(&template, &condition);
    assert!(parameters.contains("MaximumWorkers") && parameters.contains("ContinuousMode"), "{condition}: {parameters:?}");
    assert_eq!(ref_name(&properties_of(function)["Environment"]["Variables"]["RELAY_CONTINUOUS"]), Some("ContinuousMode"));
    assert_eq!(template["Parameters"]["ContinuousMode"]["Default"].as_str(), Some("false"), "off by default");
    let properties = &function["Properties"];
    assert_eq!(ref_name(&properties["ReservedConcurrentExecutions"]), Some("MaximumWorkers"));
    assert_eq!(ref_name(&properties["Environment"]["Variables"]["RELAY_MAXIMUM_WORKERS"]), Some("MaximumWorkers"));
    let parameter = &template["Parameters"]["MaximumWorkers"];
    assert_eq!((parameter["MinValue"].as_u64(), parameter["MaxValue"].as_u64()), (Some(1), Some(2000)), "AWS's MaximumPollers range");
    Ok(())
}

fn properties_of(function: &Value) -> &Value {
    &function["Properties"]

}

/// What an intrinsic expression evaluates to, for the few functions the policy uses on ARN lists.
#[derive(Debug, Clone, PartialEq)]
enum Evaluated {
    Text(String),
    List(Vec<String>),
}

/// Evaluates `Ref` (to `parameters`), `Join`, `Split`, `Sub` (with a variable map) and literals.
fn evaluate(value: &Value, parameters: &BTreeMap<&str, Vec<String>>) -> Result<Evaluated, Box<dyn Error>> {
    let text = |v: &Value| -> Result<String, Box<dyn Error>> {
        match evaluate(v, parameters)? {
            Evaluated::Text(t) => Ok(t),
            other => Err(format!("expected text, got {other:?}").into()),
        }
    };
    let list = |v: &Value| -> Result<Vec<String>, Box<dyn Error>> {
        match evaluate(v, parameters)? {
            Evaluated::List(items) => Ok(items),
            Evaluated::Text(t) => Err(format!("expected a list, got {t:?}").into()),
        }
    };
    // Intrinsics first: serde_yaml's `as_str` looks through tags (`!Ref X` would read as "X").
    let Some((name, argument)) = intrinsic(value) else {
        return match value {
            Value::String(s) => Ok(Evaluated::Text(s.clone())),
            Value::Sequence(items) => Ok(Evaluated::List(items.iter().map(text).collect::<Result<_, _>>()?)),
            other => Err(format!("cannot evaluate {other:?}").into()),
        };
    };
    let arguments = argument.as_sequence();
    Ok(match (name.as_str(), arguments.map(Vec::as_slice)) {
        ("Ref", _) => {
            let parameter = argument.as_str().ok_or("Ref of a non-name")?;
            Evaluated::List(parameters.get(parameter).cloned().ok_or_else(|| format!("unknown parameter {parameter}"))?)
        }
        ("Join", Some([separator, items])) => Evaluated::Text(list(items)?.join(&text(separator)?)),
        ("Split", Some([separator, whole])) => {
            Evaluated::List(text(whole)?.split(text(separator)?.as_str()).map(String::from).collect())
        }
        ("Sub", Some([template, variables])) => {
            let mut out = template.as_str().ok_or("Sub template is not text")?.to_string();
            for (key, variable) in variables.as_mapping().ok_or("Sub variables are not a map")? {
                let key = key.as_str().ok_or("Sub variable name")?;
                out = out.replace(&format!("${{{key}}}"), &text(variable)?);
            }
            Evaluated::Text(out)
        }
        (other, _) => return Err(format!("cannot evaluate {other}").into()),
    })
}

/// MSK: the control-plane and data-plane statements exist only with clusters listed, and name the listed
/// clusters, their topics (`topic/NAME/UUID/*`) and their groups (`group/NAME/UUID/*`): never `*` or another
/// cluster's resources.
#[test]
fn msk_statements_name_the_clusters_topics_and_groups() -> TestResult {
    let template = template()?;
    let clusters = vec![
        "arn:aws:kafka:us-east-1:123456789012:cluster/orders/751d2973-a626-431c-9d4e-d7975eb44dd7-2".to_string(),
        "arn:aws:kafka:eu-west-1:210987654321:cluster/serverless-x/0a1b2c3d-4e5f-6789-abcd-ef0123456789-s3".to_string(),
    ];
    let parameters: BTreeMap<&str, Vec<String>> = [("MskClusterArns", clusters.clone())].into_iter().collect();
    let mut found: BTreeMap<BTreeSet<String>, Vec<String>> = BTreeMap::new();
    for statement in policy_statements(&template) {
        let mut referenced = BTreeSet::new();
        references(&statement.body["Resource"], &mut referenced);
        if !referenced.contains("MskClusterArns") {
            if referenced.contains("MskFailureTopicArns") {
                // Kafka on-failure destinations: the listed topics themselves (checked by
                // each_service_gets_exactly_the_actions_the_relay_calls).
                continue;
            }
            assert!(
                !statement.actions().iter().any(|a| a.starts_with("kafka:") || a.starts_with("kafka-cluster:")),
                "{}: MSK actions on resources other than the listed clusters",
                statement.origin
            );
            continue;
        }
        let condition = statement.condition.as_deref().ok_or("MSK statement without a condition")?;
        assert!(condition_parameters(&template, condition).contains("MskClusterArns"), "{condition}");
        let resources = match evaluate(&statement.body["Resource"], &parameters)? {
            Evaluated::List(items) => items,
            Evaluated::Text(one) => vec![one],
        };
        found.insert(statement.actions().into_iter().map(String::from).collect(), resources);
    }
    let actions = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<BTreeSet<_>>();
    let with = |kind: &str| -> Vec<String> {
        clusters.iter().map(|arn| format!("{}/*", arn.replace(":cluster/", &format!(":{kind}/")))).collect()
    };
    let expected: BTreeMap<BTreeSet<String>, Vec<String>> = [
        (actions(&["kafka:GetBootstrapBrokers", "kafka:DescribeClusterV2"]), clusters.clone()),
        (actions(&["kafka-cluster:Connect", "kafka-cluster:DescribeClusterDynamicConfiguration"]), clusters.clone()),
        (actions(&["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]), with("topic")),
        (actions(&["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]), with("group")),
        (actions(&["kafka-cluster:WriteDataIdempotently"]), clusters.clone()),
    ]
    .into_iter()
    .collect();
    assert_eq!(found, expected);
    assert_eq!(
        with("topic")[0],
        "arn:aws:kafka:us-east-1:123456789012:topic/orders/751d2973-a626-431c-9d4e-d7975eb44dd7-2/*"
    );
    Ok(())
}

/// The dashboard and the alarms are optional (one switch), their thresholds are parameters, and every
/// metric they read is one the relay emits (`kafka_lambda_relay::metrics::METRIC_UNITS`).
#[test]
fn dashboard_and_alarms_hang_on_one_switch_and_read_metrics_the_relay_emits() -> TestResult {
    let template = template()?;
    let condition = &template["Conditions"]["CreateMonitoring"];
    let (name, argument) = intrinsic(condition).ok_or("CreateMonitoring is not an intrinsic")?;
    assert_eq!(name, "Equals");
    assert_eq!(ref_name(&argument[0]), Some("CreateDashboardAndAlarms"));
    let emitted: BTreeSet<&str> = kafka_lambda_relay::metrics::METRIC_UNITS.iter().map(|(n, _)| *n).collect();
    let resources = template["Resources"].as_mapping().ok_or("no Resources")?;
    let mut alarms = 0;
    let mut dashboards = 0;
    for (logical_id, resource) in resources {
        let kind = resource["Type"].as_str().unwrap_or_default();
        if !matches!(kind, "AWS::CloudWatch::Alarm" | "AWS::CloudWatch::Dashboard") {
            continue;
        }
        assert_eq!(resource["Condition"].as_str(), Some("CreateMonitoring"), "{logical_id:?} must hang on the switch");
        let text = serde_yaml::to_string(&resource["Properties"])?;
        let words: BTreeSet<&str> = text.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
        let named: Vec<&&str> = words.iter().filter(|w| emitted.contains(**w)).collect();
        for word in &words {
            let group = kafka_lambda_relay::config::METRIC_GROUPS.contains(word);
            if !group && (word.ends_with("EventCount") || word.ends_with("ErrorCount") || word.ends_with("Lag")) {
                assert!(emitted.contains(word), "{logical_id:?} reads {word}, which the relay does not emit");
            }
        }
        assert!(!named.is_empty(), "{logical_id:?} reads no metric the relay emits");
        assert!(text.contains("KafkaLambdaRelay"), "{logical_id:?} reads another namespace");
        if kind == "AWS::CloudWatch::Alarm" {
            alarms += 1;
            let threshold = ref_name(&resource["Properties"]["Threshold"]).ok_or("a threshold must be a parameter")?;
            assert!(template["Parameters"][threshold].is_mapping(), "{threshold} is not a parameter");
        } else {
            dashboards += 1;
        }
    }
    assert_eq!((dashboards, alarms), (1, 3));
    Ok(())
}
